#!/usr/bin/env bash
# Runs colex on this one machine: installs missing packages, builds, starts
# a single-node controller and an agent, runs examples/hello.hcl (a busybox
# httpd silo), prints every host's table and fetches the silo's page.
#
#   ./deploy/quickstart.sh        start (restarts an earlier quickstart)
#   ./deploy/quickstart.sh stop   remove the silo, stop agent and controller
#
# Must run as root: the agent creates namespaces, a bridge, veths, a
# WireGuard mesh link listening on UDP 51820, iptables chains and cgroups,
# and turns on net.ipv4.ip_forward. README.md lists what it changes.
# The binaries are built into target/debug, or $CARGO_TARGET_DIR/debug
# when that variable is set.
set -euo pipefail
cd "$(dirname "$0")/.."

readonly CONTROLLER_ADDR=127.0.0.1:7069
readonly WORK_DIR=/var/lib/colex/quickstart
readonly BIN_DIR=${CARGO_TARGET_DIR:-target}/debug
readonly SETTLE_SECONDS=30
# Agents report usage every 2 s, and CPU needs two reports, so 10 s leaves room on a busy host.
readonly USAGE_WAIT_SECONDS=10

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

# Prints the value in column $2 (a header such as CPU) of silo $1's row of `list`. The column
# is found by its header, so new columns do not break this.
silo_column() {
  cli list 2>/dev/null | awk -F'|' -v silo="$1" -v header="$2" '
    !column { for (i = 1; i <= NF; i++) { name = $i; gsub(/ /, "", name); if (name == header) column = i } }
    column && $2 ~ ("^ *" silo " *$") { value = $column; gsub(/ /, "", value); print value }'
}

# Prints the names of the silos the controller stores other than hello, one per line, without
# instance indexes. Prints nothing when the controller does not respond.
other_silo_names() {
  { cli list 2>/dev/null || true; } | awk -F'|' '
    /^\|-/ { next }
    { name = $2; gsub(/ /, "", name); sub(/\[[0-9]+\]$/, "", name) }
    name != "" && name != "NAME" && name != "hello" { print name }' | sort -u
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
  controller_responds=false
  other_silos=()
  if [[ -x $BIN_DIR/colex-cli ]] && cli list >/dev/null 2>&1; then
    controller_responds=true
    mapfile -t other_silos < <(other_silo_names)
  fi
  stop
  echo "quickstart stopped; state is kept in $WORK_DIR"
  if [[ $controller_responds != true ]]; then
    echo "the controller did not respond, so its stored silos are not listed; they start again" \
      "at the next quickstart, and deleting $WORK_DIR removes them all"
  elif ((${#other_silos[@]})); then
    echo "these silos stay stored in the controller and start again at the next quickstart: ${other_silos[*]}"
    echo "to remove them, delete $WORK_DIR (all quickstart state), or start the quickstart and run:" \
      "$BIN_DIR/colex-cli down$(printf ' --name %s' "${other_silos[@]}")"
  else
    echo "no other silos are stored in the controller"
  fi
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

# Every connection is mutual TLS. A new cluster writes an enrollment key, valid for 35 s, to
# its data dir: enroll root's CLI with it (certificate files in ~/.config/colex). A resumed
# cluster opens no window, and an enrolled CLI needs none.
echo "waiting for the controller" >&2
enrolled=false
for ((i = 0; i < SETTLE_SECONDS * 5; i++)); do
  if cli list >/dev/null 2>&1; then
    enrolled=true
    break
  fi
  if [[ -f $WORK_DIR/controller/enrollment.key ]] &&
    cli enroll --name root --key-file "$WORK_DIR/controller/enrollment.key" >/dev/null 2>&1; then
    echo "enrolled root as admin; certificate files are in ~/.config/colex" >&2
    enrolled=true
    break
  fi
  sleep 0.2
done
if [[ $enrolled != true ]]; then
  echo "the CLI could not enroll within $SETTLE_SECONDS s: $(cli list 2>&1 >/dev/null)" >&2
  echo "delete $WORK_DIR for a new cluster, or ask an admin for \`colex-cli enroll --reopen\`; see $WORK_DIR/controller.log" >&2
  exit 1
fi

# A host without a certificate joins with a join token, passed in the environment so that it
# does not show in the process list.
agent_token=
if [[ ! -f $WORK_DIR/agent/agent.crt ]]; then
  agent_token=$(cli tokens create --role agent --ttl 10m 2>/dev/null)
fi
host_name=$(hostname)
COLEX_TOKEN=$agent_token "$BIN_DIR/colex-agent" --join "$CONTROLLER_ADDR" --name "$host_name" --state-dir "$WORK_DIR/agent" \
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

echo "waiting for the agent's first usage reports" >&2
reported=false
for ((i = 0; i < USAGE_WAIT_SECONDS * 5; i++)); do
  cpu=$(silo_column hello CPU) || cpu=
  if [[ -n $cpu && $cpu != - ]]; then
    reported=true
    break
  fi
  sleep 0.2
done
cli list --all-hosts
if [[ $reported != true ]]; then
  echo "(a - in CPU, MEMORY, NET I/O, PIDS or UPTIME means that no usage report has arrived yet)"
fi
echo

address=$(silo_column hello ADDRESSES)
echo "fetching http://$address/ from the hello silo:"
# The silo is UP once its program runs; httpd may need a moment to listen.
curl --silent --show-error --max-time 5 --retry 10 --retry-connrefused --retry-delay 1 "http://$address/"
echo
echo "controller and agent keep running (logs in $WORK_DIR); stop them with: $0 stop"
bin_path=$(cd "$BIN_DIR" && pwd)
echo "colex-cli, colex-controller and colex-agent are in $bin_path, which is not on PATH; add it with:"
echo "  export PATH=\"$bin_path:\$PATH\""
