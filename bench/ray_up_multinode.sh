#!/usr/bin/env bash
# README "Many GPUs: a Ray cluster" on a real two-node cluster built on this machine: the
# real `ray up cluster.local.yaml` over SSH to a head and a worker, each in its own network,
# mount, PID and UTS namespace (own sshd, home, /tmp, /dev/shm), a shared folder standing
# for NFS at /mnt/shared on both, and a client (where `ray up` runs) in a third namespace.
# Then a search through `ray job submit`, a kill of the worker's Ray mid-trial, the
# checks, and `ray down`. Not part of `make test` (root; minutes; GBs of wheels).
# RELIABILITY.md, section "Two nodes: `ray up` with a worker", records a run (2026-12-07).
#
#   sudo bench/ray_up_multinode.sh                # wheelhouse on the shared folder (the README's route)
#   WHEELHOUSE=0 bench/ray_up_multinode.sh        # nodes install from the index (before)
#   JOIN_ONLY=1 ...                               # stop once the worker has joined
#   REPRODUCE_V2=1 bench/ray_up_multinode.sh      # the config without its autoscaler-v1 pin:
#                                                 # shows the worker never joining, then stops
#
# Network: a bridge in the client's namespace (10.213.7.1), the head (.10) and the worker
# (.11) on veth pairs; no address outside the namespaces this script makes. Nothing leaves
# them except the nodes' pip, to the package index only, through bench/ray_up_local.sh's
# CONNECT proxy (the hosts pip's configuration names: bench/index_hosts.py), reached from
# inside over a Unix socket. Every wait is bounded; the whole run is bounded by DEADLINE.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
NODE_USER=${NODE_USER:-hrnode}
NAME=multinode                   # the search: /mnt/shared/handreid/multinode/
SPACE=${SPACE:-spaces/demo.yml}
NUM_SAMPLES=${NUM_SAMPLES:-8}
MAX_CONCURRENT=${MAX_CONCURRENT:-3}   # more than the head's 2 CPUs hold: the worker gets trials
WHEELHOUSE=${WHEELHOUSE:-1}
WHEEL_CACHE=${WHEEL_CACHE:-/var/tmp/handreid-wheelhouse}   # kept between runs
REPRODUCE_V2=${REPRODUCE_V2:-0}
KILL_WORKER=${KILL_WORKER:-1}
DEADLINE=${DEADLINE:-3000}       # s, the whole run
WORKER_WAIT=${WORKER_WAIT:-1200} # s, from `ray up` returning to the worker in `ray status`
NET=10.213.7
CLIENT_IP=$NET.1 HEAD_IP=$NET.10 WORKER_IP=$NET.11
SHARED_MNT=/mnt/shared           # where cluster.local.yaml's wheelhouse line looks

[ "$(id -u)" = 0 ] || { echo "run as root (namespaces, a user, sshd)" >&2; exit 2; }
[ -x "$REPO/.venv/bin/ray" ] || { echo "no $REPO/.venv: run make install first" >&2; exit 2; }
case "$REPO/" in /tmp/*|/dev/shm/*)  # each namespace gets its own /tmp and /dev/shm
    echo "$REPO: the clone must not be under /tmp or /dev/shm, which the namespaces replace" >&2
    exit 2;;
esac

WORK=$(mktemp -d /var/tmp/handreid-multinode.XXXXXX)   # not under /tmp: /tmp is replaced inside
chmod 755 "$WORK"
LOG=$WORK/run.log
TIMES=$WORK/timings.tsv
exec > >(tee -a "$LOG") 2>&1
echo "work dir: $WORK"
JOIN_ONLY=${JOIN_ONLY:-0}
export REPO WORK TIMES NODE_USER NAME SPACE NUM_SAMPLES MAX_CONCURRENT NET CLIENT_IP HEAD_IP WORKER_IP \
    SHARED_MNT REPRODUCE_V2 WORKER_WAIT WHEELHOUSE JOIN_ONLY
T0=$(date +%s)
stamp() { echo "$(( $(date +%s) - T0 ))"; }  # seconds since the start
phase() {  # phase NAME: close the previous phase, print its duration
    local now; now=$(date +%s)
    [ -n "${PHASE:-}" ] && printf '%s\t%ss\n' "$PHASE" $((now - PHASE_START)) | tee -a "$TIMES"
    PHASE=$1; PHASE_START=$now
    [ -n "$PHASE" ] && echo "=== $PHASE (t=$(stamp)s)"
    return 0
}

PIDS=()
MADE_MNT=0
cleanup() {
    local rc=$?
    for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done  # ends each namespace
    sleep 1
    [ "$MADE_MNT" = 1 ] && rmdir "$SHARED_MNT" 2>/dev/null || true
    if [ "${KEEP_NODE:-0}" != 1 ]; then
        id "$NODE_USER" >/dev/null 2>&1 && { userdel -r "$NODE_USER" 2>/dev/null \
            || echo "note: could not remove user $NODE_USER"; }
        # the nodes' venvs (about 6 GB each) and the wheel links; the logs stay
        rm -rf "$WORK"/head/home/handreid-venv "$WORK"/worker/home/handreid-venv \
            "$WORK"/shared/handreid-wheels
    fi
    echo "exit $rc; log $LOG, timings $TIMES"
}
trap cleanup EXIT

# --- 0. the machine --------------------------------------------------------------------------
phase "0 packages (openssh-server, rsync, python3-venv)"
missing=()
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v rsync >/dev/null || missing+=(rsync)
/usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# --- 1. the nodes' user, homes, keys, the shared folder --------------------------------------
phase "1 user, homes, ssh keys, shared folder"
if id "$NODE_USER" >/dev/null 2>&1; then userdel -r "$NODE_USER" 2>/dev/null || true; fi
useradd -m -s /bin/bash "$NODE_USER"
usermod -p '*' "$NODE_USER"          # no password, but not locked (sshd refuses locked users)
NODE_HOME=$(getent passwd "$NODE_USER" | cut -d: -f6)
export NODE_HOME
mkdir -p "$WORK/client/home" "$WORK/client/tmp" "$WORK/shared/handreid"
chown "$NODE_USER:" "$WORK/shared" "$WORK/shared/handreid"
chmod 1777 "$WORK/client/tmp"
KEY=$WORK/client/id_ed25519
ssh-keygen -q -t ed25519 -N '' -f "$KEY" -C "ray-up-multinode"
export KEY
{
    [ -f /root/.config/pip/pip.conf ] && cat /root/.config/pip/pip.conf || echo "[global]"
    echo "proxy = http://127.0.0.1:3128"
} > "$WORK/pip.conf"
for role in head worker; do
    mkdir -p "$WORK/$role/tmp" "$WORK/$role/shm"
    chmod 1777 "$WORK/$role/tmp" "$WORK/$role/shm"
    install -d -m 755 -o "$NODE_USER" -g "$NODE_USER" "$WORK/$role/home"
    cp -r /etc/skel/. "$WORK/$role/home/" && chown -R "$NODE_USER:" "$WORK/$role/home"
    install -d -m 700 -o "$NODE_USER" -g "$NODE_USER" "$WORK/$role/home/.ssh" \
        "$WORK/$role/home/.config" "$WORK/$role/home/.config/pip"
    install -m 600 -o "$NODE_USER" -g "$NODE_USER" "$KEY.pub" "$WORK/$role/home/.ssh/authorized_keys"
    install -m 644 -o "$NODE_USER" -g "$NODE_USER" "$WORK/pip.conf" "$WORK/$role/home/.config/pip/pip.conf"
    ip=$([ "$role" = head ] && echo "$HEAD_IP" || echo "$WORKER_IP")
    ssh-keygen -q -t ed25519 -N '' -f "$WORK/$role/ssh_host_ed25519_key"
    cat > "$WORK/$role/sshd_config" <<EOF
Port 22
ListenAddress $ip
HostKey $WORK/$role/ssh_host_ed25519_key
PidFile $WORK/$role/sshd.pid
AllowUsers $NODE_USER
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes yes
MaxStartups 50
MaxSessions 50
EOF
done
if [ ! -d "$SHARED_MNT" ]; then mkdir -p "$SHARED_MNT"; MADE_MNT=1; fi  # a mount point only
# the namespaces' own /etc/hosts and an empty resolv.conf: names resolve locally, and a DNS
# query fails at once instead of waiting for a server that no packet can reach
printf '127.0.0.1 localhost\n%s hr-client\n%s hr-head\n%s hr-worker\n' \
    "$CLIENT_IP" "$HEAD_IP" "$WORKER_IP" > "$WORK/hosts"
: > "$WORK/resolv.conf"

# --- 2. the wheelhouse on the shared folder (README: make wheelhouse) -------------------------
if [ "$WHEELHOUSE" = 1 ]; then
    phase "2 wheelhouse: make wheelhouse (kept in $WHEEL_CACHE), linked into the shared folder"
    nice -n 10 make -C "$REPO" -s wheelhouse WHEELS="$WHEEL_CACHE"
    cp -al "$WHEEL_CACHE" "$WORK/shared/handreid-wheels"
    echo "wheelhouse: $(ls "$WORK/shared/handreid-wheels"/*.whl | wc -l) wheels, $(du -sh "$WHEEL_CACHE" | cut -f1)"
fi

# --- 3. the README's step-1 edits, on a copy ---------------------------------------------------
phase "3 cluster.local.yaml: the EDIT lines"
CFG=$WORK/client/cluster.local.yaml
sed -e "s|^  head_ip: .*|  head_ip: $HEAD_IP|" \
    -e "s|^  worker_ips: .*|  worker_ips: [$WORKER_IP]|" \
    -e "s|^  ssh_user: .*|  ssh_user: $NODE_USER|" \
    -e "s|^  # ssh_private_key: .*|  ssh_private_key: $KEY|" \
    "$REPO/cluster.local.yaml" > "$CFG"
if [ "$REPRODUCE_V2" = 1 ]; then  # the config as it was: Ray's default autoscaler (v2)
    sed -i -e 's|RAY_enable_autoscaler_v2=0 ||' "$CFG"
fi
for want in "head_ip: $HEAD_IP" "worker_ips: \[$WORKER_IP\]" "ssh_user: $NODE_USER" "ssh_private_key: $KEY"; do
    grep -q "^  $want\$" "$CFG" || { echo "edit failed: $want" >&2; exit 1; }
done
diff "$REPO/cluster.local.yaml" "$CFG" || true
export CFG

# --- the index proxy: outside (Unix socket) <- inside each node (127.0.0.1:3128) -------------
SOCK=$WORK/pipproxy.sock
export SOCK
sed -n '/^cat > "$WORK\/client\/pipproxy.py" <<.EOF.$/,/^EOF$/p' "$REPO/bench/ray_up_local.sh" \
    | sed '1d;$d' > "$WORK/pipproxy.py"
grep -q "async def connect" "$WORK/pipproxy.py" || { echo "proxy source not found" >&2; exit 1; }
INDEX_HOSTS=$("$REPO/.venv/bin/python" "$REPO/bench/index_hosts.py")
echo "the proxy lets through: ${INDEX_HOSTS//$'\n'/ }"
# shellcheck disable=SC2086  # one argument per host
/usr/bin/python3 "$WORK/pipproxy.py" serve "$SOCK" $INDEX_HOSTS 2>>"$WORK/proxy.log" &
PIDS+=($!)

# --- the nodes: each in its own namespaces ------------------------------------------------------
cat > "$WORK/node.sh" <<'NODE'
set -uo pipefail
role=$1 ip=$2
hostname "hr-$role"
mount --bind "$WORK/hosts" /etc/hosts
mount --bind "$WORK/resolv.conf" /etc/resolv.conf
mount --bind "$WORK/$role/tmp" /tmp
mount -t tmpfs -o size=4g,mode=1777 tmpfs /dev/shm
mount --bind "$WORK/$role/home" "$NODE_HOME"
mount --bind "$WORK/shared" "$SHARED_MNT"
ip link set lo up
for _ in $(seq 100); do ip link show eth0 >/dev/null 2>&1 && break; sleep 0.1; done
ip addr add "$ip/24" dev eth0 && ip link set eth0 up && ip route add default via "$CLIENT_IP"
/usr/bin/python3 "$WORK/pipproxy.py" forward "$SOCK" 3128 2>>"$WORK/proxy.log" &
mkdir -p /run/sshd
/usr/sbin/sshd -f "$WORK/$role/sshd_config" -E "$WORK/$role/sshd.log"
touch "$WORK/$role/ready"
exec sleep infinity
NODE
phase "4 namespaces: client, head, worker; bridge and veths"
# --kill-child: when this script ends an `unshare`, the namespace's first process dies, and
# with it every process in the namespace. nsenter targets that first process (the PID
# namespace is its, not unshare's).
first_child() {
    local c
    for _ in $(seq 50); do
        c=$(cat "/proc/$1/task/$1/children" 2>/dev/null | awk '{print $1}')
        [ -n "$c" ] && { echo "$c"; return 0; }
        sleep 0.1
    done
    return 1
}
unshare --kill-child --pid --fork --mount-proc --net --mount --uts bash -c \
    "hostname hr-client; mount --bind $WORK/hosts /etc/hosts; mount --bind $WORK/resolv.conf /etc/resolv.conf; ip link set lo up; exec sleep infinity" &
PIDS+=($!)
CLIENT_NS=$(first_child $!)
sleep 0.5
nsenter -t "$CLIENT_NS" -n ip link add br0 type bridge
nsenter -t "$CLIENT_NS" -n ip addr add "$CLIENT_IP/24" dev br0
nsenter -t "$CLIENT_NS" -n ip link set br0 up
declare -A NODE_NS
for role in head worker; do
    ip=$([ "$role" = head ] && echo "$HEAD_IP" || echo "$WORKER_IP")
    unshare --kill-child --pid --fork --mount-proc --net --mount --uts bash "$WORK/node.sh" \
        "$role" "$ip" > "$WORK/$role/node.log" 2>&1 &
    PIDS+=($!)
    NODE_NS[$role]=$(first_child $!)
    nsenter -t "$CLIENT_NS" -n ip link add "v-$role" type veth peer name eth0 netns "${NODE_NS[$role]}"
    nsenter -t "$CLIENT_NS" -n ip link set "v-$role" master br0 up
done
for role in head worker; do
    for _ in $(seq 100); do [ -f "$WORK/$role/ready" ] && break; sleep 0.2; done
    [ -f "$WORK/$role/ready" ] || { echo "$role did not come up"; cat "$WORK/$role/node.log"; exit 1; }
done
echo "addresses (client namespace): $(nsenter -t "$CLIENT_NS" -n ip -4 -o addr show | awk '{print $2, $4}' | tr '\n' ' ')"
echo "host namespace has none of $NET.0/24: $(ip -4 -o addr show | grep -c "$NET\." || true) addresses"

# --- the worker's Ray killed mid-trial, from here (the namespaces' parent) ---------------------
# Waits for a trial epoch reported from the worker (node_ip in result.json) of a trial still
# running, then SIGKILLs every process of the node user in the worker's PID namespace (its
# raylet, its workers, the trials on it), by PID; sshd (root) stays, as on a machine whose
# Ray died.
kill_worker_mid_trial() {
    local storage=$WORK/shared/handreid/$NAME deadline=$(( $(date +%s) + 1800 ))
    while [ "$(date +%s)" -lt "$deadline" ] && [ ! -f "$WORK/client/done" ]; do
        if [ -d "$storage" ] && "$REPO/.venv/bin/python" - "$storage" "$WORKER_IP" <<'PY'
import json, sys
from pathlib import Path
for f in Path(sys.argv[1]).glob("trial_*/result.json"):
    rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    if rows and rows[-1].get("node_ip") == sys.argv[2] and not rows[-1].get("done"):
        if rows[-1]["epoch"] >= 1 and rows[-1].get("status") == "running":
            print(f"worker trial {f.parent.name} at epoch {rows[-1]['epoch']}")
            sys.exit(0)
sys.exit(1)
PY
        then
            local pids
            pids=$(nsenter -t "${NODE_NS[worker]}" -p -m ps -u "$NODE_USER" -o pid= | tr '\n' ' ')
            echo "KILL (t=$(stamp)s): SIGKILL to the worker's Ray, pids $pids"
            # shellcheck disable=SC2086
            nsenter -t "${NODE_NS[worker]}" -p -m kill -9 $pids
            echo "$(date +%s)" > "$WORK/worker-killed"
            return 0
        fi
        sleep 1
    done
    echo "KILL: no worker trial seen mid-run"
}

# --- 5..11: the README steps, in the client's namespace ------------------------------------------
cat > "$WORK/client/flow.sh" <<'FLOW'
set -uo pipefail
T0=$1
stamp() { echo "$(( $(date +%s) - T0 ))"; }
PHASE=; PHASE_START=$(date +%s)
phase() {
    local now; now=$(date +%s)
    [ -n "$PHASE" ] && printf '%s\t%ss\n' "$PHASE" $((now - PHASE_START)) | tee -a "$TIMES"
    PHASE=$1; PHASE_START=$now
    [ -n "$PHASE" ] && echo "=== $PHASE (t=$(stamp)s)"
    return 0
}
FAILED=()
check() {  # check DESCRIPTION CMD...: run, record a failure, carry on
    local what=$1; shift
    if "$@"; then echo "ok: $what"; else echo "!!! FAILED: $what"; FAILED+=("$what"); return 1; fi
}
mount --bind "$WORK/client/tmp" /tmp
export HOME=$WORK/client/home TMPDIR=/tmp
unset RAY_ADDRESS RAY_AUTH_MODE RAY_AUTH_TOKEN RAY_AUTH_TOKEN_PATH
source "$REPO/.venv/bin/activate"
cd "$REPO"
SSH=(ssh -i "$KEY" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes)
for ip in "$HEAD_IP" "$WORKER_IP"; do
    "${SSH[@]}" "$NODE_USER@$ip" 'echo "ssh ok: $(id -un)@$(hostname), $(python3 --version), home $(ls -A ~ | tr "\n" " ")"' \
        || { echo "ssh to $ip failed"; exit 1; }
done
nodes_up() {  # the nodes `ray status` on the head counts as active or idle
    ray exec "$CFG" 'ray status' 2>/dev/null \
        | awk '/^(Active|Idle):/{a=1;next} /^[A-Z][a-z]+( [a-z]+)*:/{a=0} a && $1 ~ /^[0-9]+$/{n+=$1} END{print n+0}'
}

phase "README 1: ray up (head: sync, setup_commands, ray start)"
UP_START=$(date +%s)
echo "$UP_START" > "$WORK/client/ray-up-start"
check "ray up" ray up --disable-usage-stats -y "$CFG" > "$WORK/client/ray-up.log" 2>&1 \
    || { tail -30 "$WORK/client/ray-up.log"; phase ""; exit 1; }
echo "head up $(( $(date +%s) - UP_START ))s after ray up started; its set-up steps:"
sed 's/\x1b\[[0-9;]*m//g' "$WORK/client/ray-up.log" | grep -E 'updater.py:[0-9]+ -- (\[[0-9]/7\]|\([0-9]/[0-9]+\))' \
    | sed -E 's/^[0-9-]+ ([0-9:]+),[0-9]+.*-- /  \1 /' | cut -c1-110

phase "README 1b: the worker joins (set up by the head's autoscaler)"
joined=0
deadline=$(( $(date +%s) + WORKER_WAIT ))
while [ "$(date +%s)" -lt "$deadline" ]; do
    n=$(nodes_up)
    [ "$n" -ge 2 ] && { joined=1; break; }
    sleep 10
done
if [ "$joined" = 1 ]; then
    echo "WORKER JOINED $(( $(date +%s) - UP_START ))s after ray up started (within 10 s)"
else
    echo "worker not joined after ${WORKER_WAIT}s"
fi
ray exec "$CFG" 'ray status' 2>/dev/null | sed -n '/Node status/,/Resources/p'
check "ray status: 2 nodes" test "$(nodes_up)" = 2
if [ "$REPRODUCE_V2" = 1 ] || [ "$joined" = 0 ] || [ "${JOIN_ONLY:-0}" = 1 ]; then
    phase "README 7: ray down"
    ray down -y "$CFG"
    phase ""
    [ ${#FAILED[@]} -eq 0 ] && { echo "JOINED; stopped there (JOIN_ONLY)"; exit 0; }
    printf 'FAILED: %s\n' "${FAILED[@]}"; exit 1
fi

phase "README 2: ray rsync-down the token"
mkdir -p ~/.ray
check "rsync-down token" ray rsync-down "$CFG" '~/.ray/auth_token' ~/.ray/handreid-token
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$HOME/.ray/handreid-token"
stat -c '%a %n' ~/.ray/handreid-token

phase "README 3: ray dashboard (127.0.0.1:8265, as typed)"
setsid ray dashboard "$CFG" > "$WORK/client/dashboard-forward.log" 2>&1 &
FWD=$!
for _ in $(seq 60); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8265/)" != 000 ] && break; sleep 1
done
no_token=$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8265/api/jobs/)
with_token=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $(cat ~/.ray/handreid-token)" http://127.0.0.1:8265/api/jobs/)
echo "dashboard: HTTP $no_token without the token, $with_token with it"
check "dashboard refuses no token" test "$no_token" = 401
check "dashboard takes the token" test "$with_token" = 200
printf 'not-the-token' > "$WORK/client/wrong-token"
if RAY_AUTH_TOKEN_PATH="$WORK/client/wrong-token" timeout 60 ray status --address "$HEAD_IP:6379" > "$WORK/client/wrong-token.log" 2>&1; then
    check "a client with a wrong token is refused" false
else
    echo "a client with a wrong token: $(grep -m1 -i -E 'auth|token|unauthenticated' "$WORK/client/wrong-token.log" | cut -c1-160)"
    check "a client with a wrong token is refused" true
fi

phase "README 4: ray job submit (search: $SPACE, $NUM_SAMPLES samples, $MAX_CONCURRENT at once, storage on the shared folder)"
touch "$WORK/client/job-submitted"
JOB_START=$(date +%s)
ray job submit --address http://127.0.0.1:8265 --working-dir . \
    --runtime-env-json '{"env_vars": {"RAY_JOB_STOP_WAIT_TIME_S": "120"}}' -- handreid-search \
    --space "$SPACE" --address auto --storage /mnt/shared/handreid --name "$NAME" \
    --num-samples "$NUM_SAMPLES" --max-concurrent "$MAX_CONCURRENT" --confirm-seeds 0 \
    > "$WORK/client/job.log" 2>&1
echo "job: exit $?, $(( $(date +%s) - JOB_START ))s; its last lines:"
tail -15 "$WORK/client/job.log"
check "job SUCCEEDED" bash -c "ray job list --address http://127.0.0.1:8265 2>/dev/null | grep -q SUCCEEDED"
touch "$WORK/client/done"

phase "checks: where trials ran, nothing lost or duplicated, start times"
check "search results on the storage" python "$REPO/bench/multinode_check.py" \
    "$WORK/shared/handreid/$NAME" "$WORKER_IP" "$NUM_SAMPLES" "$WORK/worker-killed"

phase "README 5: optuna-dashboard on the head, --port-forward 8080 (as typed)"
setsid ray exec "$CFG" --port-forward 8080 \
    "timeout 40 optuna-dashboard sqlite:////mnt/shared/handreid/$NAME/study.db" \
    > "$WORK/client/optuna-dashboard.log" 2>&1 &
OD=$!
code=000
for _ in $(seq 35); do
    code=$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8080/api/studies || true)
    [ "$code" = 200 ] && break; sleep 1
done
echo "optuna-dashboard /api/studies: HTTP $code"
check "optuna-dashboard" test "$code" = 200
kill -- -"$OD" 2>/dev/null; wait "$OD" 2>/dev/null

phase "README 6: handreid-report on the head"
check "handreid-report" ray exec "$CFG" "handreid-report /mnt/shared/handreid/$NAME"
check "report written" test -s "$WORK/shared/handreid/$NAME/report/report.html"
kill -- -"$FWD" 2>/dev/null; wait "$FWD" 2>/dev/null

phase "README 7: ray down"
check "ray down" ray down -y "$CFG"
phase ""
[ ${#FAILED[@]} -eq 0 ] && { echo "ALL CHECKS OK"; exit 0; }
printf 'FAILED: %s\n' "${FAILED[@]}"; exit 1
FLOW

[ "$KILL_WORKER" = 1 ] && [ "$REPRODUCE_V2" != 1 ] && [ "${JOIN_ONLY:-0}" != 1 ] && {
    ( for _ in $(seq "$DEADLINE"); do [ -f "$WORK/client/job-submitted" ] && break; sleep 1; done
      kill_worker_mid_trial ) &
    PIDS+=($!)
}
phase ""
rc=0
timeout "$DEADLINE" nsenter -t "$CLIENT_NS" -n -m -u -p bash "$WORK/client/flow.sh" "$T0" || rc=$?
[ "$rc" = 124 ] && echo "!!! the run passed its DEADLINE of ${DEADLINE}s"

echo "--- the head's autoscaler (its monitor.log, read from the head's /tmp here):"
MON=$(ls -d "$WORK"/head/tmp/ray/session_2* 2>/dev/null | tail -1)/logs
if [ -f "$MON/monitor.log" ]; then
    strip() { sed 's/\x1b\[[0-9;]*m//g' | cut -c1-240; }
    grep -h -m2 -E 'allocated unmanaged|no longer found' "$MON/monitor.log" | strip || true
    echo "\"satisfy min count\" lines: $(grep -c 'satisfy min count' "$MON/monitor.log" || true)"
    echo "the worker's set-up, as the head's autoscaler ran it:"
    cat "$MON"/monitor.log "$MON"/monitor.out 2>/dev/null | sed 's/\x1b\[[0-9;]*m//g' \
        | grep -E 'updater.py:[0-9]+ -- (\[[0-9]/7\]|\([0-9]/[0-9]+\))' \
        | sed -E 's/^[0-9-]+ ([0-9:]+),[0-9]+.*-- /  \1 /' | cut -c1-110 | head -20 || true
    echo "local provider state on the head: $(cat "$WORK"/head/tmp/ray/cluster-*.state 2>/dev/null)"
fi
[ "$REPRODUCE_V2" = 1 ] && { echo "total: $(stamp)s" | tee -a "$TIMES"; exit $rc; }
if [ "${JOIN_ONLY:-0}" = 1 ]; then
    du -sh "$WORK/worker/home/handreid-venv" 2>/dev/null | sed "s|^|worker venv: |"
    echo "total: $(stamp)s" | tee -a "$TIMES"; exit $rc
fi
echo "--- the worker's token (copied by cluster_synced_files) against the head's:"
stat -c '%a %U %n' "$WORK/head/home/.ray/auth_token" "$WORK/worker/home/.ray/auth_token" 2>&1
if cmp -s "$WORK/head/home/.ray/auth_token" "$WORK/worker/home/.ray/auth_token" \
    && [ "$(stat -c %a "$WORK/worker/home/.ray/auth_token")" = 600 ]; then
    echo "ok: the worker holds the head's token, mode 600"
else
    echo "!!! FAILED: the worker's token"; rc=1
fi
built=$(ls -d "$WORK"/worker/home/.cache/handreid/{synth,pretrained} 2>/dev/null || true)
if [ -z "$built" ]; then
    echo "ok: the worker built no input (no synth/ or pretrained/ in its own cache)"
else
    echo "!!! FAILED: the worker built inputs itself: $built"; rc=1
fi
echo "--- node set-up, from the nodes' own logs:"
for role in head worker; do
    du -sh "$WORK/$role/home/handreid-venv" 2>/dev/null | sed "s|^|$role venv: |"
done
awk '/^CONNECT/ {n++; b[$2]+=$3} END {for (h in b) printf "via the index proxy: %s %.1f MB\n", h, b[h]/1e6; print n+0, "connections through the proxy"}' \
    "$WORK/proxy.log"
{ grep -v '^CONNECT' "$WORK/proxy.log" || true; } | sort | uniq -c | head -5  # none: no line
echo "total: $(stamp)s" | tee -a "$TIMES"
exit $rc
