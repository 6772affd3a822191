#!/usr/bin/env bash
# A one-node Slurm cluster on localhost for the `slurm`-marked tests (make test-slurm), without systemd.
#   tests/slurm/cluster.sh up      install Slurm + munge with apt if missing, start munged, slurmctld, slurmd
#   tests/slurm/cluster.sh down    stop them
#   tests/slurm/cluster.sh env     the PATH and SLURM_CONF lines that reach this cluster
# Slurm's client commands (srun, sbatch, ...) are moved off PATH (dpkg-divert) into $BIN: with srun on PATH
# every Lightning Trainer warns and submitit's auto executor picks Slurm, in every other test.
set -euo pipefail

BIN=/usr/local/lib/gridface-slurm/bin
STATE=${GRIDFACE_SLURM_STATE:-/var/tmp/gridface-slurm}
CONF=$STATE/slurm.conf
CLIENTS="srun sbatch scancel squeue sinfo scontrol sacct salloc sattach sstat sprio sshare sdiag sreport strigger sbcast scrontab sacctmgr"

install_slurm() {
  if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
      || { [ ! -e /usr/bin/sbatch ] && [ ! -e "$BIN/sbatch" ]; }; then
    echo "installing slurmctld slurmd slurm-client munge with apt"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurmctld slurmd slurm-client munge
  fi
  mkdir -p "$BIN"
  for c in $CLIENTS; do
    if [ -e "/usr/bin/$c" ] && [ ! -e "$BIN/$c" ]; then
      dpkg-divert --quiet --local --rename --divert "$BIN/$c" --add "/usr/bin/$c"
    fi
  done
}

write_conf() {
  local host cpus
  host=$(hostname)
  cpus=$(nproc)
  mkdir -p "$STATE/ctld" "$STATE/slurmd"
  cat > "$CONF" <<CONF
ClusterName=gridface
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=/run/munge/munge.socket.2,cred_expire=10
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
MpiDefault=none
ReturnToService=2
MinJobAge=300
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmdSpoolDir=$STATE/slurmd
StateSaveLocation=$STATE/ctld
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
NodeName=${host} NodeAddr=127.0.0.1 CPUs=${cpus} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
}

stop_pid() {  # a pid file's process, politely then not
  local f=$1
  [ -f "$f" ] || return 0
  local pid
  pid=$(cat "$f")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$f"
}

up() {
  install_slurm
  down >/dev/null 2>&1 || true
  write_conf
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  [ -s /etc/munge/munge.key ] || mungekey -c
  munged --force --pid-file=/run/munge/gridface-munged.pid
  export SLURM_CONF=$CONF
  slurmctld -c -f "$CONF"
  slurmd -f "$CONF"
  for _ in $(seq 60); do
    state=$("$BIN/sinfo" -h -o %t 2>/dev/null | head -1 || true)
    if [ "$state" = "idle" ]; then echo "slurm is up: one node, $(nproc) CPUs, partition debug (SLURM_CONF=$CONF)"; return 0; fi
    sleep 1
  done
  echo "slurm did not come up; last lines of the logs:" >&2
  tail -n 20 "$STATE/slurmctld.log" "$STATE/slurmd.log" >&2 || true
  return 1
}

down() {
  if [ -x "$BIN/scancel" ] && [ -f "$CONF" ]; then SLURM_CONF=$CONF "$BIN/scancel" --full --user="$(id -un)" 2>/dev/null || true; fi
  stop_pid "$STATE/slurmd.pid"
  stop_pid "$STATE/slurmctld.pid"
  stop_pid /run/munge/gridface-munged.pid
  echo "slurm is down"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  env) echo "PATH=$BIN:\$PATH"; echo "SLURM_CONF=$CONF" ;;
  *) echo "usage: $0 up|down|env" >&2; exit 2 ;;
esac
