#!/usr/bin/env bash
# A single-node Slurm on localhost for the tests: munged, slurmctld and slurmd with a generated
# slurm.conf, everything (keys, sockets, spool, logs) under DIR; no cgroups, no accounting.
# Jobs are tracked by process group (proctrack/pgid refuses to signal group 0 or its own):
# linuxproc signals every descendant of the job's recorded pid, which is 0 until its first
# task starts, and every process on the machine descends from 0.
#
#   scripts/slurm/local-cluster.sh start DIR   # prints `export SLURM_CONF=DIR/slurm.conf`
#   scripts/slurm/local-cluster.sh stop DIR
#
# Needs Debian's slurm-wlm and munge (apt-get install slurm-wlm munge) and root (slurmd runs
# jobs as their submitting user). Exit 3 when they are absent, so callers can skip.
set -euo pipefail
cmd=${1:?usage: local-cluster.sh start|stop DIR}
dir=${2:?usage: local-cluster.sh start|stop DIR}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

stop() {
    for p in slurmd slurmctld munged; do
        if [ -f "$dir/$p.pid" ]; then
            pid=$(cat "$dir/$p.pid")
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -9 "$pid" 2>/dev/null || true
            rm -f "$dir/$p.pid"
        fi
    done
}

if [ "$cmd" = stop ]; then
    stop
    exit 0
fi
[ "$cmd" = start ] || { echo "usage: local-cluster.sh start|stop DIR" >&2; exit 2; }
for b in munged slurmctld slurmd sbatch squeue; do
    command -v "$b" >/dev/null || [ -x "/usr/sbin/$b" ] || { echo "no $b (apt-get install slurm-wlm munge)" >&2; exit 3; }
done
[ "$(id -u)" = 0 ] || { echo "slurmd must run as root here" >&2; exit 3; }
export PATH="/usr/sbin:$PATH"
stop
mkdir -p "$dir/spool/ctld" "$dir/spool/d" "$dir/log" "$dir/munge"
chmod 700 "$dir/munge"
[ -f "$dir/munge/munge.key" ] || { head -c 1024 /dev/urandom > "$dir/munge/munge.key"; chmod 400 "$dir/munge/munge.key"; }
host=$(hostname -s)
cpus=$(nproc)
mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 3 / 4 ))
# Two free ports below the kernel's ephemeral range (where clients and servers like moto take
# theirs), starting from one the folder's name picks, so two clusters do not collide.
in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
base=$(( 20000 + $(printf '%s' "$dir" | cksum | cut -d' ' -f1) % 12000 ))
for _ in $(seq 200); do
    if ! in_use "$base" && ! in_use $((base + 1)); then break; fi
    base=$(( 20000 + (base - 20000 + 2) % 12000 ))
done
cat > "$dir/slurm.conf" <<CONF
ClusterName=crossmerge-test
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$base
SlurmdPort=$((base + 1))
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$dir/spool/ctld
SlurmdSpoolDir=$dir/spool/d
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/pgid
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MinJobAge=600
MaxArraySize=10001
SchedulerParameters=sched_interval=1
KillWait=2
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
munged --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
    --pid-file="$dir/munged.pid" --log-file="$dir/log/munged.log" \
    --seed-file="$dir/munge/seed" --force
export SLURM_CONF="$dir/slurm.conf"
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
# Up within 60 s, or a clear failure (a daemon that died is not waited for).
deadline=$((SECONDS + 60))
while [ "$SECONDS" -lt "$deadline" ]; do
    if timeout 5 sinfo -h -o '%T' 2>/dev/null | grep -Eq '^(idle|mixed|allocated)'; then
        echo "export SLURM_CONF=$SLURM_CONF"
        exit 0
    fi
    for p in slurmctld slurmd; do
        if ! kill -0 "$(cat "$dir/$p.pid" 2>/dev/null || echo 0)" 2>/dev/null; then
            sleep 0.5
            kill -0 "$(cat "$dir/$p.pid" 2>/dev/null || echo 0)" 2>/dev/null && continue
            echo "$p did not start; its log:" >&2
            tail -3 "$dir/log/$p.log" >&2 || true
            stop
            exit 1
        fi
    done
    sleep 0.2
done
echo "slurm did not come up; logs in $dir/log" >&2
tail -5 "$dir/log/"*.log >&2 || true
stop
exit 1
