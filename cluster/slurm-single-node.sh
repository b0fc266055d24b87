#!/usr/bin/env bash
# slurm-single-node.sh -- a real one-node SLURM cluster on this machine, for the tests of
# `volden apply --cluster slurm` (dask-jobqueue SLURMCluster) and for trying cluster/*.sbatch.
#
#   sudo bash cluster/slurm-single-node.sh up      install (once), configure, start, check; idempotent
#   sudo bash cluster/slurm-single-node.sh down    cancel all jobs, stop munged/slurmctld/slurmd
#        bash cluster/slurm-single-node.sh status  daemons, sinfo, squeue
#
# Exit status: 0 = done / cluster up; 1 = failed (one line "slurm-single-node.sh: error: ..." on
# stderr); 2 = bad usage; 3 = `status` found the cluster not up.
#
# Made for (and tested on) Debian 12 without systemd as PID 1 (a VM or container), run as root.
# Debian's slurm-wlm 22.05 and munge 0.5.15 packages. Nothing here needs systemd or cgroups: the
# daemons are started directly and daemonize themselves, writing the PID files that `down` uses.
#
# Accounting without a database: each finished job is appended as one line to the text file
# /var/log/slurm/jobcomp.log ("JobId=2 UserId=root(0) ... Name=wrap JobState=COMPLETED ... ExitCode=0:0").
# Read it with `sacct -c` (--completion: sacct reads that file; -j ID, -s STATE and -o FIELDS work)
# or parse the file. Plain `sacct` fails ("Slurm accounting storage is disabled": no slurmdbd).
#
# Settings (environment): SLURM_PARTITION (debug), SLURM_DEF_MEM_PER_CPU (1000 MB, lowered when the
# node has less per CPU), SLURM_MEM_PERCENT (95: share of the detected memory the node advertises).
set -euo pipefail

PROG=slurm-single-node.sh
PARTITION=${SLURM_PARTITION:-debug}
DEF_MEM_PER_CPU=${SLURM_DEF_MEM_PER_CPU:-1000}
MEM_PERCENT=${SLURM_MEM_PERCENT:-95}

CONF=/etc/slurm/slurm.conf
CONF_TAG="# written by cluster/slurm-single-node.sh (volden); rewritten by every 'up'"
LOG_DIR=/var/log/slurm
JOBCOMP_LOG=$LOG_DIR/jobcomp.log
CTLD_STATE=/var/spool/slurmctld
SLURMD_SPOOL=/var/spool/slurmd
LOCK=/run/lock/slurm-single-node.lock
APT_LOG=/tmp/slurm-single-node-apt.log
# The daemons and the PID files they write (munged's is its default; the slurm ones are set in
# slurm.conf below, at the paths Debian's own units use).
DAEMONS=(munged slurmctld slurmd)
declare -A PIDFILE=([munged]=/run/munge/munged.pid [slurmctld]=/run/slurmctld.pid [slurmd]=/run/slurmd.pid)

T0=$SECONDS
log() { printf '%s [%3ds] %s\n' "$PROG" $((SECONDS - T0)) "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }
need_root() { [ "$(id -u)" = 0 ] || die "'$1' must run as root (sudo bash $0 $1)"; }

# --- processes -------------------------------------------------------------------------------

# Prints the PID of daemon $1 if its PID file names a live process of that name.
# The name check guards against a stale PID file whose number now belongs to something else.
# A zombie counts as stopped: PID 1 here reaps slowly, so an exited daemon can stay a zombie for
# seconds. But while a multi-threaded daemon (slurmctld, slurmd) exits, its main thread can be a
# zombie while other threads still run: that is still running, so every thread is looked at.
daemon_pid() {
    local name=$1 file=${PIDFILE[$1]} pid task
    [ -s "$file" ] || return 1
    read -r pid <"$file" 2>/dev/null || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ] || return 1
    for task in /proc/"$pid"/task/*/stat; do
        # field 3 of stat is the state; the name in field 2 has no spaces for these daemons
        case "$(awk '{print $3}' "$task" 2>/dev/null)" in Z | X | "") ;; *) echo "$pid"; return 0 ;; esac
    done
    return 1
}

# Same as daemon_pid but for any process of that name, PID file or not (used by the final check of
# `down`, which must not report success while e.g. a slurmd started by hand still runs).
live_pids_named() {
    local pid out=""
    for pid in $(pgrep -x "$1" || true); do
        if grep -qv '^[^)]*) [ZX] ' /proc/"$pid"/task/*/stat 2>/dev/null; then out+="$pid "; fi
    done
    [ -n "$out" ] && echo "${out% }"
}

# SIGTERM the daemon named in its PID file, wait for it; SIGKILL only as a last resort
# (a killed slurmctld loses the job state it had not saved yet).
stop_daemon() {
    local name=$1 pid i
    pid=$(daemon_pid "$name") || { log "$name: not running"; rm -f "${PIDFILE[$name]}"; return 0; }
    log "$name: SIGTERM to pid $pid"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 60; i++)); do daemon_pid "$name" >/dev/null || break; sleep 0.25; done
    if daemon_pid "$name" >/dev/null; then
        log "$name: still running after 15 s, SIGKILL to pid $pid"
        kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 20; i++)); do daemon_pid "$name" >/dev/null || break; sleep 0.25; done
    fi
    daemon_pid "$name" >/dev/null || rm -f "${PIDFILE[$name]}"
}

# --- up --------------------------------------------------------------------------------------

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sinfo >/dev/null \
        && command -v munged >/dev/null; then
        return 0
    fi
    log "installing slurmctld slurmd slurm-client munge (apt-get; output in $APT_LOG)"
    export DEBIAN_FRONTEND=noninteractive
    # Always update first: the image's package lists may be old enough to point at removed versions.
    { apt-get update -q && apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge; } \
        >"$APT_LOG" 2>&1 || die "apt-get failed: $(grep -E '^(E|W):' "$APT_LOG" | tail -1) (full output: $APT_LOG)"
    log "installed $(slurmd -V), munge $(dpkg-query -W -f '${Version}' munge)"
}

# munged must be up before slurmctld/slurmd: every SLURM message is signed with munge.
start_munge() {
    if [ ! -s /etc/munge/munge.key ]; then     # Debian's postinst normally made one
        log "munge: creating /etc/munge/munge.key"
        mkdir -p /etc/munge
        mungekey --create --keyfile=/etc/munge/munge.key
    fi
    chown munge:munge /etc/munge /etc/munge/munge.key && chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key
    # Under systemd, /run/munge is the unit's RuntimeDirectory; without systemd nobody makes it and
    # munged cannot create its socket there.
    install -d -o munge -g munge -m 0755 /run/munge
    mkdir -p /var/lib/munge /var/log/munge && chown munge:munge /var/lib/munge /var/log/munge
    if ! daemon_pid munged >/dev/null; then
        log "munged: starting (as user munge: it refuses to run as root)"
        runuser -u munge -- /usr/sbin/munged 9>&- || die "munged did not start; see /var/log/munge/munged.log"
    fi
    local i
    for ((i = 0; i < 40; i++)); do munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && return 0; sleep 0.25; done
    die "munge does not work ('munge -n | unmunge' fails); see /var/log/munge/munged.log"
}

# Writes slurm.conf for this one node. Sets CONF_CHANGED=1 when the file's content changed.
write_conf() {
    local node detected cpus mem defmem new
    node=$(hostname -s)
    # slurmd and srun look the node name up; map it to loopback if nothing resolves it
    getent hosts "$node" >/dev/null || { log "adding '127.0.0.1 $node' to /etc/hosts"; echo "127.0.0.1 $node" >>/etc/hosts; }
    # What slurmd itself detects, e.g. "NodeName=vm CPUs=2 Boards=1 ... RealMemory=24105"
    detected=$(slurmd -C 2>/dev/null | head -1)
    cpus=$(sed -n 's/.*[[:space:]]CPUs=\([0-9]*\).*/\1/p' <<<"$detected")
    mem=$(sed -n 's/.*[[:space:]]RealMemory=\([0-9]*\).*/\1/p' <<<"$detected")
    [ -n "$cpus" ] && [ -n "$mem" ] || die "cannot read CPUs/RealMemory from 'slurmd -C': '$detected'"
    # A node that has less memory than slurm.conf claims is drained ("Low RealMemory"), so claim a
    # little less than detected.
    mem=$((mem * MEM_PERCENT / 100))
    # Without DefMemPerCPU a job without --mem gets the whole node's memory and every other job
    # waits (Reason=Resources). Keep it at most RealMemory/CPUs so each CPU can get a job.
    defmem=$((DEF_MEM_PER_CPU < mem / cpus ? DEF_MEM_PER_CPU : mem / cpus))
    mkdir -p /etc/slurm "$LOG_DIR" "$CTLD_STATE" "$SLURMD_SPOOL"
    new=$(cat <<EOF
$CONF_TAG
ClusterName=volden-single
# The controller and the node are this host, reached over loopback whatever eth0's address is.
SlurmctldHost=$node(127.0.0.1)
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$CTLD_STATE
SlurmdSpoolDir=$SLURMD_SPOOL
SlurmctldPidFile=${PIDFILE[slurmctld]}
SlurmdPidFile=${PIDFILE[slurmd]}
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
# No cgroups: they are not delegated in every VM/container, and one test node does not need them.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
# Accounting without slurmdbd: per-job usage is gathered, and each finished job is appended to a
# text file (there is no database, so sacct has nothing to read).
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$JOBCOMP_LOG
# Every CPU (hardware thread) is a slot, memory is a consumable.
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=$defmem
SchedulerType=sched/backfill
# A node marked DOWN (slurmd restarted, unclean stop) returns to service when slurmd registers.
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
# The default (/bin/mail) is not installed; slurmctld logs "MailProg is invalid" without this.
MailProg=/bin/true
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
)
    CONF_CHANGED=0
    if [ -f "$CONF" ] && [ "$(cat "$CONF")" = "$new" ]; then return 0; fi
    if [ -f "$CONF" ] && ! grep -qxF "$CONF_TAG" "$CONF"; then     # someone else's config: keep it
        cp -p "$CONF" "$CONF.before-single-node.$(date +%Y%m%d%H%M%S)"
        log "kept the previous $CONF as $CONF.before-single-node.*"
    fi
    printf '%s\n' "$new" >"$CONF"
    chmod 0644 "$CONF"
    log "wrote $CONF: node $node, CPUs=$cpus RealMemory=$mem DefMemPerCPU=$defmem, partition $PARTITION"
    CONF_CHANGED=1
}

# Prints the node's state as sinfo has it, e.g. idle, mixed, down*, drained, unknown*.
node_state() { timeout 10 sinfo -h -N -n "$(hostname -s)" -o '%T' 2>/dev/null | head -1; }

wait_for_node() {
    local state="" i
    for ((i = 0; i < 120; i++)); do      # 30 s
        state=$(node_state || true)
        case $state in
            idle | mixed | allocated | completing) return 0 ;;
            # left down/drained by an earlier unclean stop (ReturnToService does not lift a
            # drain): give slurmd a moment to register, then resume the node
            *drain* | down*) ((i == 8)) && { log "node is '$state': resuming it"; scontrol update NodeName="$(hostname -s)" State=RESUME 2>/dev/null || true; } ;;
        esac
        sleep 0.25
    done
    die "node $(hostname -s) not usable after 30 s (state '${state:-no answer}'; $(sinfo -h -R -o '%E' 2>/dev/null | head -1)); see $LOG_DIR/slurmd.log"
}

up() {
    install_packages
    start_munge
    write_conf
    # slurm.conf changed under running daemons (e.g. another partition name): restart them, since
    # `scontrol reconfigure` does not apply node changes.
    if [ "$CONF_CHANGED" = 1 ] && { daemon_pid slurmctld >/dev/null || daemon_pid slurmd >/dev/null; }; then
        log "slurm.conf changed: restarting slurmd and slurmctld"
        stop_daemon slurmd
        stop_daemon slurmctld
    fi
    if ! daemon_pid slurmctld >/dev/null; then
        log "slurmctld: starting"
        slurmctld 9>&- || die "slurmctld did not start; see $LOG_DIR/slurmctld.log"
    fi
    local i
    for ((i = 0; i < 80; i++)); do timeout 5 scontrol ping 2>/dev/null | grep -q 'is UP' && break; sleep 0.25; done
    timeout 5 scontrol ping 2>/dev/null | grep -q 'is UP' || die "slurmctld does not answer 'scontrol ping'; see $LOG_DIR/slurmctld.log"
    if ! daemon_pid slurmd >/dev/null; then
        log "slurmd: starting"
        slurmd 9>&- || die "slurmd did not start; see $LOG_DIR/slurmd.log"
    fi
    wait_for_node
    # A real job through the whole chain (controller -> slurmd -> slurmstepd -> munge). On a cluster
    # whose CPUs are all taken by jobs it would only queue, and those jobs already prove it works.
    if [ "$(node_state)" = allocated ]; then
        log "node fully allocated by running jobs: skipping the 'srun true' check"
    else
        timeout 60 srun -p "$PARTITION" -N1 -n1 -t 1 --mem=16M true \
            || die "'srun true' failed (or hung for 60 s); see $LOG_DIR/slurmctld.log and slurmd.log"
        # the node shows 'completing' for a moment after the step; report it once it is idle again
        for ((i = 0; i < 40; i++)); do [ "$(node_state)" = completing ] || break; sleep 0.25; done
    fi
    log "up ($(slurmd -V), partition $PARTITION, finished jobs logged in $JOBCOMP_LOG)"
    sinfo
}

# --- down ------------------------------------------------------------------------------------

down() {
    local jobs i name pids left=""
    if daemon_pid slurmctld >/dev/null; then
        jobs=$(timeout 10 squeue -h -o %i 2>/dev/null || true)
        if [ -n "$jobs" ]; then
            log "cancelling jobs: ${jobs//$'\n'/ }"
            # shellcheck disable=SC2086  # one argument per job id
            timeout 10 scancel $jobs 2>/dev/null || true
            for ((i = 0; i < 60; i++)); do [ -z "$(timeout 10 squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.25; done
            jobs=$(timeout 10 squeue -h -o %i 2>/dev/null || true)
            [ -z "$jobs" ] || log "jobs still listed after scancel (stopped with the daemons): ${jobs//$'\n'/ }"
        fi
    fi
    # slurmd first (so no job lands on it), then the controller, then munge which both use.
    stop_daemon slurmd
    stop_daemon slurmctld
    stop_daemon munged
    for name in "${DAEMONS[@]}"; do
        pids=$(live_pids_named "$name") && left+="$name (pid $pids) "
    done
    [ -z "$left" ] || die "still running: ${left% } (not started by this script's PID files?)"
    # job step daemons end with their jobs; one left over means a job's processes are still there
    if pids=$(live_pids_named slurmstepd); then log "warning: slurmstepd still running (pid $pids)"; fi
    log "down: munged, slurmctld and slurmd stopped"
}

# --- status ----------------------------------------------------------------------------------

status() {
    local name pid ok=1 state
    for name in "${DAEMONS[@]}"; do
        if pid=$(daemon_pid "$name"); then echo "$name: running (pid $pid)"; else echo "$name: not running"; ok=0; fi
    done
    if daemon_pid slurmctld >/dev/null; then
        timeout 10 sinfo || ok=0
        timeout 10 squeue || ok=0
        state=$(node_state || true)
        case $state in idle | mixed | allocated | completing) ;; *) echo "node state: '${state:-no answer}'"; ok=0 ;; esac
    fi
    if [ "$ok" = 1 ]; then echo "cluster: up"; return 0; fi
    echo "cluster: not up"
    return 3
}

# --- main ------------------------------------------------------------------------------------

case ${1:-} in
    up | down)
        need_root "$1"
        # One up/down at a time (parallel test sessions may both call `up`). The daemons are
        # started with fd 9 closed, or they would inherit the lock and hold it for good.
        mkdir -p "$(dirname "$LOCK")"
        exec 9>"$LOCK"
        flock -w 120 9 || die "another $PROG up/down has held $LOCK for 120 s"
        "$1"
        ;;
    status) status ;;
    *) echo "usage: $PROG up|down|status" >&2; exit 2 ;;
esac
