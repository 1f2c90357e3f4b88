#!/bin/sh
# Runs in the systemd guest (tests/vm/init-systemd): installs the .deb, starts two readers in
# limited scopes with their own mount namespaces, then restarts, SIGKILLs, reloads and
# reinstalls the service while they read. Every read must succeed with the reader's own
# MemTotal. Prints VM-RESULT and VM-EXIT lines, then powers off.
deb=$(cat /etc/cgprocfs-vmtest.deb)
rc=0
fail() { echo "VM-RESULT fail: $*"; rc=1; }
echo "VM: systemd $(systemctl --version | head -n1), kernel $(uname -r)"
timeout 120 dpkg -i "$deb" > /tmp/dpkg.log 2>&1 || { cat /tmp/dpkg.log; fail "dpkg -i"; }
if ! systemctl is-active --quiet cgprocfs; then
    fail "cgprocfs is not active after install"
    systemctl status cgprocfs --no-pager | head -n 20
    journalctl -b --no-pager -o cat -u cgprocfs | tail -n 30
fi
systemctl show -p Type -p NotifyAccess -p FileDescriptorStoreMax cgprocfs
# Readers: the host's uptime, then the first line of the bound meminfo (FAIL if unreadable).
reader() {
    systemd-run --scope -q -p MemoryMax="$2" --unit="reader-$1" unshare -m sh -c \
        "mount --bind /var/lib/cgprocfs/proc/meminfo /proc/meminfo && while :; do read up idle < /proc/uptime; echo \"\$up \$(head -n1 /proc/meminfo 2>&1 || echo FAIL)\"; done" \
        > "/tmp/$1.out" 2>&1 &
}
reader a 128M
reader b 384M
sleep 3
step() {
    echo "$(cut -d' ' -f1 /proc/uptime) $*" >> /tmp/steps
    echo "VM: $*"
    # Generous: dpkg's triggers (man-db) are slow on an emulated CPU.
    timeout 300 "$@" || fail "$* (exit $?)"
    sleep 3
    systemctl is-active --quiet cgprocfs || fail "cgprocfs is not active after: $*"
}
step systemctl restart cgprocfs
step systemctl kill -s KILL cgprocfs
step systemctl reload cgprocfs
step dpkg -i "$deb"
systemctl is-active --quiet cgprocfs || fail "cgprocfs is not active at the end"
systemctl show -p NFileDescriptorStore -p NRestarts -p MainPID cgprocfs
systemctl stop reader-a.scope reader-b.scope
sleep 1
for r in a:131072 b:393216; do
    n=${r%%:*} kb=${r#*:}
    lines=$(wc -l < "/tmp/$n.out")
    bad=$(grep -v "MemTotal: *$kb kB" "/tmp/$n.out" | grep -c .)
    gap=$(awk '{ if (NR > 1 && $1 - p > g) g = $1 - p; p = $1 } END { printf "%.2f", g }' "/tmp/$n.out")
    echo "VM: reader $n: $lines reads, $bad failed or wrong, longest gap ${gap}s"
    # The longest gap between two reads within each step's window (the step's own pause).
    awk 'NR == FNR { at[NR] = $1; $1 = ""; name[NR] = $0; n = NR; next }
         { for (i = n; i >= 1 && $1 < at[i]; i--); if (i >= 1 && FNR > 1 && $1 - p > g[i]) g[i] = $1 - p; p = $1 }
         END { for (i = 1; i <= n; i++) printf "VM: reader '"$n"': longest pause during%s: %.2fs\n", name[i], g[i] }' /tmp/steps "/tmp/$n.out"
    grep -v "MemTotal: *$kb kB" "/tmp/$n.out" | head -n 5
    [ "$lines" -gt 50 ] || fail "reader $n hardly read"
    [ "$bad" -eq 0 ] || fail "reader $n: $bad failed or wrong reads"
done
journalctl -b -u cgprocfs --no-pager -o cat | tail -n 40
[ $rc -eq 0 ] && echo "VM-RESULT ok"
echo "VM-EXIT $rc"
systemctl poweroff --force --force
