#!/usr/bin/env bash
# A real single-machine Slurm cluster (slurmctld + two emulated nodes n1, n2) for CI and the cluster test.
# Usage: scripts/local-slurm.sh up|down|status
#   LSGM_SLURM_DIR   state dir (default ${TMPDIR:-/tmp}/lsgm-slurm)
#   LSGM_SLURM_PORT  slurmctld port (default 6817); the nodes listen on PORT+1 and PORT+2
set -euo pipefail

DIR=${LSGM_SLURM_DIR:-${TMPDIR:-/tmp}/lsgm-slurm}
PORT=${LSGM_SLURM_PORT:-6817}
NODES=(n1 n2)
CONF=$DIR/etc/slurm.conf
# Clients read the default path, so nobody has to export SLURM_CONF; an existing file is kept aside.
SYS_CONF=/etc/slurm/slurm.conf
BACKUP=$SYS_CONF.lsgm-backup
TAG="# lsgm-local-slurm"
SOCK=$DIR/munge/munge.socket
export SLURM_CONF=$CONF   # daemons look for cgroup.conf next to SLURM_CONF (not next to -f)

say() { echo "local-slurm: $*" >&2; }
die() { say "$*"; exit 1; }
# Inside up(): remember why, and let the EXIT trap clean up and print the single failure line.
fail() { FAIL=$*; exit 1; }

ensure_packages() {
    local b missing=0
    for b in slurmctld slurmd munged sinfo sbatch; do command -v "$b" >/dev/null || missing=1; done
    [ "$missing" = 0 ] && return 0
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        die "slurm-wlm/munge are missing and cannot be installed here (needs root and apt-get)"
    fi
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
}

write_conf() {
    mkdir -p "$DIR/etc" "$DIR/ctld"
    cat >"$CONF" <<EOF
ClusterName=lsgm
SlurmctldHost=$(hostname -s)(127.0.0.1)
SlurmctldPort=$PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# Private munged socket: never touches /run/munge or a system munged.
# cred_expire is also how long a requeued job waits before it may start again (default 120 s).
AuthInfo=socket=$SOCK,cred_expire=10
MailProg=/bin/true
StateSaveLocation=$DIR/ctld
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmctldLogFile=$DIR/slurmctld.log
# %n gives each emulated node its own spool, pid and log (Debian builds with multiple-slurmd support).
SlurmdSpoolDir=$DIR/%n/spool
SlurmdPidFile=$DIR/%n/slurmd.pid
SlurmdLogFile=$DIR/%n/slurmd.log
# cgroup (freezer) tracking is the only tracker that also kills setsid'd children on scancel/timeout.
ProctrackType=proctrack/cgroup
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
# Frequent passes so requeued/begin-time jobs start within seconds, not a minute.
SchedulerParameters=sched_interval=5,bf_interval=5
# CR_CPU: memory is not a consumable, so --mem never blocks scheduling.
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# Finished jobs stay in squeue for an hour: the executor plugin polls squeue, not sacct.
MinJobAge=3600
JobRequeue=1
KillWait=30
InactiveLimit=0
ReturnToService=2
SlurmdTimeout=300
# Declared sizes are accepted even where they exceed what the machine reports.
SlurmdParameters=config_overrides
NodeName=n1 NodeAddr=127.0.0.1 Port=$((PORT + 1)) CPUs=2 RealMemory=8000 State=UNKNOWN
NodeName=n2 NodeAddr=127.0.0.1 Port=$((PORT + 2)) CPUs=2 RealMemory=8000 State=UNKNOWN
PartitionName=debug Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP
EOF
    # Autodetection is unreliable on hybrid/emulated cgroup mounts; only v1 freezer is needed.
    cat >"$DIR/etc/cgroup.conf" <<EOF
CgroupPlugin=cgroup/v1
CgroupMountpoint=/sys/fs/cgroup
CgroupAutomount=no
ConstrainCores=no
ConstrainRAMSpace=no
ConstrainDevices=no
EOF
}

install_conf() {
    mkdir -p /etc/slurm
    [ -L "$SYS_CONF" ] && [ ! -e "$SYS_CONF" ] && rm -f "$SYS_CONF"   # dangling: an old run's link
    if [ -e "$SYS_CONF" ] || [ -L "$SYS_CONF" ]; then
        [ "$(readlink "$SYS_CONF" || true)" = "$CONF" ] && return 0
        [ -e "$BACKUP" ] || mv "$SYS_CONF" "$BACKUP"
        rm -f "$SYS_CONF"
    fi
    ln -s "$CONF" "$SYS_CONF"
}

restore_conf() {
    [ -L "$SYS_CONF" ] && [ "$(readlink "$SYS_CONF")" = "$CONF" ] && rm -f "$SYS_CONF"
    if [ -e "$BACKUP" ] && [ ! -e "$SYS_CONF" ]; then mv "$BACKUP" "$SYS_CONF"; fi
    return 0
}

hosts_add() {
    getent hosts n1 >/dev/null && getent hosts n2 >/dev/null && return 0
    echo "127.0.0.1 n1 n2 $TAG" >>/etc/hosts
}

hosts_remove() {
    grep -qF "$TAG" /etc/hosts || return 0
    local tmp; tmp=$(mktemp)
    grep -vF "$TAG" /etc/hosts >"$tmp" || true
    cat "$tmp" >/etc/hosts   # rewrite in place: /etc/hosts is often a bind mount
    rm -f "$tmp"
}

start_munge() {
    mkdir -p "$DIR/munge"
    chmod 755 "$DIR/munge"   # munged insists the socket dir be world-searchable
    if [ ! -s "$DIR/munge/munge.key" ]; then
        dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
        chmod 400 "$DIR/munge/munge.key"
    fi
    chown -R munge:munge "$DIR/munge"   # munged refuses a key/log not owned by its own uid
    runuser -u munge -- munged -S "$SOCK" --pid-file="$DIR/munge/munged.pid" \
        --log-file="$DIR/munge/munged.log" --seed-file="$DIR/munge/munged.seed" \
        --key-file="$DIR/munge/munge.key"
}

# pid from a file, only if that process is still the daemon we started
live_pid() {
    local pid
    pid=$(cat "$1" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] && echo "$pid"
}

any_alive() {
    local p
    for p in "$@"; do kill -0 "$p" 2>/dev/null && return 0; done
    return 1
}

stop_all() {
    local _ n f pid pids=()
    if live_pid "$DIR/slurmctld.pid" slurmctld >/dev/null; then
        # Cancel every job so no slurmstepd outlives the daemons.
        squeue -h -t PD,R,S,CG -o %i 2>/dev/null | xargs -r scancel 2>/dev/null || true
        for _ in $(seq 30); do
            [ -z "$(squeue -h -t R,CG,S -o %i 2>/dev/null)" ] && break; sleep 1
        done
    fi
    # Each daemon needs ~2 s to exit on TERM: signal all at once, then wait for all.
    for f in "${NODES[@]/%//slurmd.pid:slurmd}" slurmctld.pid:slurmctld munge/munged.pid:munged; do
        if pid=$(live_pid "$DIR/${f%:*}" "${f##*:}"); then kill -TERM "$pid" && pids+=("$pid"); fi
        rm -f "$DIR/${f%:*}"
    done
    for _ in $(seq 50); do any_alive "${pids[@]}" || break; sleep 0.2; done
    for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    # Remove the (now empty) per-node cgroup dirs slurmd created.
    for n in "${NODES[@]}"; do
        find /sys/fs/cgroup/*/"slurm_$n" -depth -type d -exec rmdir {} + 2>/dev/null || true
    done
}

nodes_idle() {
    live_pid "$DIR/slurmctld.pid" slurmctld >/dev/null &&
    [ "$(sinfo -h -N -o '%N %T' 2>/dev/null | sort -u | tr '\n' ' ')" = "n1 idle n2 idle " ]
}

nodes_respond() {
    local out
    live_pid "$DIR/slurmctld.pid" slurmctld >/dev/null || return 1
    out=$(sinfo -h -N -o '%N %T' 2>/dev/null | sort -u) || return 1
    [ "$(grep -cE '^n[12] (idle|mixed|allocated|completing)' <<<"$out")" = 2 ]
}

summary() {
    sinfo
    echo "slurm.conf: $CONF (linked from $SYS_CONF: no SLURM_CONF export needed)"
    echo "logs: $DIR/slurmctld.log $DIR/n1/slurmd.log $DIR/n2/slurmd.log"
}

up() {
    ensure_packages
    [ "$(id -u)" = 0 ] || die "must run as root (writes /etc/hosts and $SYS_CONF)"
    if [ -f "$CONF" ] && nodes_respond; then summary; return 0; fi
    stop_all >/dev/null 2>&1 || true   # leftovers from a half-started run
    # Any failure from here on (die or set -e) undoes what this run started.
    trap '[ $? = 0 ] || { stop_all >/dev/null 2>&1; restore_conf; hosts_remove
        say "up failed: ${FAIL:-unexpected error}; stopped what it started (logs in $DIR)"; }' EXIT
    rm -rf "$DIR/ctld" "$DIR"/n[12] "$DIR/slurmctld.log"
    write_conf
    for n in "${NODES[@]}"; do mkdir -p "$DIR/$n/spool"; done
    hosts_add
    install_conf
    start_munge || fail "munged did not start (see $DIR/munge/munged.log)"
    slurmctld -c || fail "slurmctld did not start (see $DIR/slurmctld.log)"
    for n in "${NODES[@]}"; do
        slurmd -N "$n" || fail "slurmd $n did not start (see $DIR/$n/slurmd.log)"
    done
    local _
    for _ in $(seq 120); do
        nodes_idle && break
        live_pid "$DIR/slurmctld.pid" slurmctld >/dev/null ||
            fail "slurmctld exited: $(grep -m1 -E 'fatal|error: Error' "$DIR/slurmctld.log" || true)"
        sleep 0.5
    done
    nodes_idle || fail "nodes n1/n2 not idle after 60 s: $(sinfo -h -N -o '%N=%T' 2>&1 | tr '\n' ' ')"
    trap - EXIT
    summary
}

down() {
    stop_all
    restore_conf
    hosts_remove
    echo "local-slurm: down"
}

status() {
    if [ -f "$CONF" ] && nodes_respond; then echo "local-slurm: up ($CONF)"; return 0; fi
    echo "local-slurm: down"; return 1
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
