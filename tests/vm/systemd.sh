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
# Readers: the host's uptime, then the first line of the bound meminfo; FAIL if the read
# failed, STUCK if it got no answer for 5 s (it is then killed and the loop goes on).
cat > /tmp/read-loop <<'LOOP'
mount --bind /var/lib/cgprocfs/proc/meminfo /proc/meminfo || exit 1
while :; do
    read up idle < /proc/uptime
    l=$(timeout -s KILL 5 head -n1 /proc/meminfo 2>&1); rc=$?
    if [ $rc -eq 137 ]; then l=STUCK; elif [ $rc -ne 0 ]; then l="FAIL $l"; fi
    echo "$up $l"
done
LOOP
reader() {
    systemd-run --scope -q -p MemoryMax="$2" --unit="reader-$1" unshare -m sh /tmp/read-loop > "/tmp/$1.out" 2>&1 &
}
# Linux 6.9+ resends what a killed worker had read (FUSE_NOTIFY_RESEND); before it, a SIGKILL
# of the whole service strands the reads in flight at that instant (at most one per worker
# thread): they are counted, not failed, on such kernels, and only during that step.
resend=$(uname -r | awk -F. '{ print ($1 > 6 || ($1 == 6 && $2 >= 9)) ? 1 : 0 }')
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
# Kept for a reader that stopped early (printed below only then).
systemctl status reader-a.scope reader-b.scope --no-pager > /tmp/scopes 2>&1
systemctl stop reader-a.scope reader-b.scope
sleep 1
for r in a:131072 b:393216; do
    n=${r%%:*} kb=${r#*:}
    lines=$(wc -l < "/tmp/$n.out")
    bad=$(grep -v "MemTotal: *$kb kB" "/tmp/$n.out" | grep -v " STUCK$" | grep -c .)
    # Stuck reads, by the step they started in.
    stuck=$(awk 'NR == FNR { at[NR] = $1; $1 = ""; name[NR] = $0; n = NR; next }
                 $2 == "STUCK" { for (i = n; i >= 1 && $1 < at[i]; i--); print (i >= 1 ? name[i] : " before the steps") }' /tmp/steps "/tmp/$n.out")
    nstuck=$(printf '%s' "$stuck" | grep -c .)
    echo "VM: reader $n: $nstuck reads stranded${stuck:+ during:$(echo "$stuck" | tr '\n' ';')}"
    if [ "$nstuck" -gt 0 ]; then
        if [ "$resend" = 1 ]; then
            fail "reader $n: $nstuck reads got no answer"
        elif [ "$nstuck" -gt 2 ] || printf '%s\n' "$stuck" | grep -qv "kill -s KILL"; then
            fail "reader $n: $nstuck reads got no answer, not only in flight at the SIGKILL"
        fi
    fi
    gap=$(awk '{ if (NR > 1 && $1 - p > g) g = $1 - p; p = $1 } END { printf "%.2f", g }' "/tmp/$n.out")
    echo "VM: reader $n: $lines reads, $bad failed or wrong, longest gap ${gap}s"
    # The longest gap between two reads within each step's window (the step's own pause).
    awk 'NR == FNR { at[NR] = $1; $1 = ""; name[NR] = $0; n = NR; next }
         { for (i = n; i >= 1 && $1 < at[i]; i--); if (i >= 1 && FNR > 1 && $1 - p > g[i]) g[i] = $1 - p; p = $1 }
         END { for (i = 1; i <= n; i++) printf "VM: reader '"$n"': longest pause during%s: %.2fs\n", name[i], g[i] }' /tmp/steps "/tmp/$n.out"
    grep -v "MemTotal: *$kb kB" "/tmp/$n.out" | head -n 5
    if [ "$lines" -le 50 ]; then
        fail "reader $n hardly read"
        # What ended or stopped it (seen once, not diagnosed): its scope, its last lines.
        grep -A 8 "reader-$n.scope" /tmp/scopes
        tail -n 3 "/tmp/$n.out"
    fi
    [ "$bad" -eq 0 ] || fail "reader $n: $bad failed or wrong reads"
done
journalctl -b -u cgprocfs --no-pager -o cat | tail -n 40
[ $rc -eq 0 ] && echo "VM-RESULT ok"
echo "VM-EXIT $rc"
systemctl poweroff --force --force
