#!/bin/sh
# Run by the VM tier's guest when CGPROCFS_VM_CAPTURE is set: builds the fixture cgroups of
# this guest's layout (MODE v2 or v1), runs a small workload in them and captures each with
# tests/fixtures/capture.sh into OUT/<MODE>-limited and OUT/<MODE>-cpuset.
#   limited: parent 256 MiB and 0.5 CPU of quota, leaf 1 GiB; ~30 MB page cache, ~20 MB anon.
#   cpuset:  CPU 1 only, no memory limit.
set -eu
mode=$1 out=$2
here=$(dirname "$0")
cg=/sys/fs/cgroup
work() {  # work CGROUP-PROCS-FILES...: a process joining them, then the workload
    sh -c 'for f in "$@"; do echo $$ > "$f"; done
           dd if=/dev/zero of=/tmp/io/cache-$$ bs=1M count=30 2>/dev/null
           exec python3 -c "import time; x = b\"x\" * (20 << 20); time.sleep(120)"' sh "$@" >/dev/null 2>&1 &
    echo $!
}
case "$mode" in
v2)
    echo "+memory +cpu +cpuset +io +pids" > $cg/cgroup.subtree_control
    mkdir -p $cg/cgp-fix/leaf $cg/cgp-cpuset
    echo "+memory +cpu +cpuset +io +pids" > $cg/cgp-fix/cgroup.subtree_control
    echo 268435456 > $cg/cgp-fix/memory.max
    echo "50000 100000" > $cg/cgp-fix/cpu.max
    echo 1073741824 > $cg/cgp-fix/leaf/memory.max
    echo 1 > $cg/cgp-cpuset/cpuset.cpus
    limited=$(work $cg/cgp-fix/leaf/cgroup.procs)
    pinned=$(work $cg/cgp-cpuset/cgroup.procs)
    ;;
v1)
    procs=""
    for c in memory cpu,cpuacct cpuset blkio pids; do
        mkdir -p $cg/$c/cgp-fix/leaf $cg/$c/cgp-cpuset
        procs="$procs $cg/$c/cgp-fix/leaf/tasks"
    done
    for d in cgp-fix cgp-fix/leaf cgp-cpuset; do
        cat $cg/cpuset/cpuset.mems > $cg/cpuset/$d/cpuset.mems
        cat $cg/cpuset/cpuset.cpus > $cg/cpuset/$d/cpuset.cpus
    done
    echo 1 > $cg/cpuset/cgp-cpuset/cpuset.cpus
    echo 268435456 > $cg/memory/cgp-fix/memory.limit_in_bytes
    echo 1073741824 > $cg/memory/cgp-fix/leaf/memory.limit_in_bytes
    echo 100000 > $cg/cpu,cpuacct/cgp-fix/cpu.cfs_period_us
    echo 50000 > $cg/cpu,cpuacct/cgp-fix/cpu.cfs_quota_us
    # shellcheck disable=SC2086
    limited=$(work $procs)
    pinned=$(work $cg/cpuset/cgp-cpuset/tasks $cg/memory/cgp-cpuset/tasks)
    ;;
esac
sleep 5
bash "$here/../fixtures/capture.sh" "$out/$mode-limited" "$limited"
bash "$here/../fixtures/capture.sh" "$out/$mode-cpuset" "$pinned"
kill "$limited" "$pinned"
