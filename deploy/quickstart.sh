#!/usr/bin/env bash
# Runs colex on this one machine: installs missing packages, builds, starts
# a single-node controller and an agent, runs examples/hello.hcl (a busybox
# httpd silo), prints every host's table and fetches the silo's page.
#
#   ./deploy/quickstart.sh        start (restarts an earlier quickstart)
#   ./deploy/quickstart.sh stop   remove the silo, stop agent and controller
#
# Must run as root: the agent creates namespaces, a bridge, veths,
# iptables rules and cgroups.
set -euo pipefail
cd "$(dirname "$0")/.."

readonly CONTROLLER_ADDR=127.0.0.1:7069
readonly WORK_DIR=/var/lib/colex/quickstart
readonly BIN_DIR=target/debug
readonly SETTLE_SECONDS=30

cli() { "$BIN_DIR/colex-cli" --serv "$CONTROLLER_ADDR" "$@"; }

# Stops the process whose PID is in file $1 (SIGTERM, then SIGKILL after $2 s).
stop_pid_file() {
  local pid_file=$1 grace=$2 pid
  [[ -f $pid_file ]] || return 0
  pid=$(<"$pid_file")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for ((i = 0; i < grace * 10; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  fi
  rm -f "$pid_file"
}

stop() {
  if [[ -f $WORK_DIR/agent.pid ]] && [[ -x $BIN_DIR/colex-cli ]]; then
    cli down examples/hello.hcl || echo "could not remove the hello silo; the teardown below removes it" >&2
  fi
  # A stopped agent leaves its silos running; teardown removes them and the
  # agent's bridge, firewall rules and cgroup dir.
  stop_pid_file "$WORK_DIR/agent.pid" 30
  if [[ -x $BIN_DIR/colex-agent ]] && [[ -d $WORK_DIR/agent ]]; then
    RUST_LOG=warn "$BIN_DIR/colex-agent" teardown --name "$(hostname)" --state-dir "$WORK_DIR/agent"
  fi
  stop_pid_file "$WORK_DIR/controller.pid" 10
}

if [[ $(id -u) -ne 0 ]]; then
  echo "quickstart: run as root (the agent creates namespaces, links and cgroups)" >&2
  exit 1
fi

if [[ ${1:-} == stop ]]; then
  stop
  echo "quickstart stopped; state is kept in $WORK_DIR"
  exit 0
fi

./deploy/install-deps.sh
cargo build --workspace --bins
if [[ -f $WORK_DIR/agent.pid ]] || [[ -f $WORK_DIR/controller.pid ]]; then
  echo "stopping the earlier quickstart" >&2
fi
stop 2>/dev/null
mkdir -p "$WORK_DIR"

# --bootstrap starts a new cluster; a data dir from an earlier run resumes it and ignores the flag.
"$BIN_DIR/colex-controller" --bootstrap --listen "$CONTROLLER_ADDR" --data-dir "$WORK_DIR/controller" \
  >"$WORK_DIR/controller.log" 2>&1 &
echo $! >"$WORK_DIR/controller.pid"

host_name=$(hostname)
"$BIN_DIR/colex-agent" --join "$CONTROLLER_ADDR" --name "$host_name" --state-dir "$WORK_DIR/agent" \
  >"$WORK_DIR/agent.log" 2>&1 &
echo $! >"$WORK_DIR/agent.pid"

echo "waiting for host $host_name to join" >&2
joined=false
for ((i = 0; i < SETTLE_SECONDS * 5; i++)); do
  if cli list --all-hosts 2>/dev/null | grep -q "^HOST $host_name .*state UP"; then
    joined=true
    break
  fi
  sleep 0.2
done
if [[ $joined != true ]]; then
  echo "host $host_name did not join within $SETTLE_SECONDS s; see $WORK_DIR/agent.log and $WORK_DIR/controller.log" >&2
  exit 1
fi

cli up examples/hello.hcl
echo
cli list --all-hosts
echo

# The ADDRESSES column is found by its header, so new columns do not break this.
address=$(cli list | awk -F'|' '
  /ADDRESSES/ && !column { for (i = 1; i <= NF; i++) { name = $i; gsub(/ /, "", name); if (name == "ADDRESSES") column = i } }
  column && $2 ~ /^ *hello *$/ { value = $column; gsub(/ /, "", value); print value }')
echo "fetching http://$address/ from the hello silo:"
# The silo is UP once its program runs; httpd may need a moment to listen.
curl --silent --show-error --max-time 5 --retry 10 --retry-connrefused --retry-delay 1 "http://$address/"
echo
echo "controller and agent keep running (logs in $WORK_DIR); stop them with: $0 stop"
