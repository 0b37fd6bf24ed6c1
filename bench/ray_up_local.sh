#!/usr/bin/env bash
# README "Many GPUs: a Ray cluster", step for step, with the real `ray up cluster.local.yaml`:
# Ray's `local` provider pointed at this machine over SSH (openssh-server on 127.0.0.1) as a
# fresh non-root user with the system Python, a tiny search through `ray job submit`, then
# `ray down`. Not part of `make test` (it runs as root, creates a user, installs the project
# into that user's venv: minutes, and GBs of torch/CUDA wheels). RELIABILITY.md, section
# "`ray up` on a real node", records a run.
#
#   sudo bench/ray_up_local.sh            # after `make install`
#   KEEP_NODE=1 bench/ray_up_local.sh     # keep the node user (and its venv) afterwards
#
# Isolation: everything Ray-related runs in its own PID, mount and network namespace
# (`unshare --pid --fork --mount-proc --net`). `ray stop` (run by `ray up`/`ray down`) then
# sees only this run's processes, Ray's fixed ports (6379, 8265, 52365, 10001 ...) and /tmp/ray
# (a private /tmp is bind-mounted) cannot collide with other Ray sessions on the machine, and
# when the namespace ends every process in it ends too. sshd runs inside it on 127.0.0.1:22.
# The node's pip reaches the package index through a CONNECT proxy that listens outside on a
# Unix socket and is forwarded to 127.0.0.1:3128 inside. It lets through only the hosts that
# pip's configuration names (bench/index_hosts.py, read when the script runs: index-url,
# extra-index-url, find-links, or pip's own default index). The node user's pip.conf names
# the proxy, next to this machine's local wheel indexes (root's pip.conf), so torch and the
# CUDA wheels come from disk as they did for .venv.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
NODE_USER=${NODE_USER:-hrnode}
NAME=rayup                       # the search name: <storage>/rayup/
SPACE=${SPACE:-spaces/demo.yml}
NUM_SAMPLES=${NUM_SAMPLES:-2}
DASH_PORT=18265                  # local end of `ray dashboard` (the head's 8265 is on this host)

[ "$(id -u)" = 0 ] || { echo "run as root (creates a user, starts sshd)" >&2; exit 2; }
[ -x "$REPO/.venv/bin/ray" ] || { echo "no $REPO/.venv: run make install first" >&2; exit 2; }

WORK=$(mktemp -d /var/tmp/handreid-rayup.XXXXXX)   # not under /tmp: /tmp is replaced inside
chmod 755 "$WORK"
LOG=$WORK/run.log
TIMES=$WORK/timings.tsv
exec > >(tee -a "$LOG") 2>&1
echo "work dir: $WORK"

t0=$(date +%s)
phase_start=$t0
phase() {  # phase NAME: close the previous phase, print its duration
    local now; now=$(date +%s)
    if [ -n "${PHASE:-}" ]; then
        printf '%s\t%ss\n' "$PHASE" $((now - phase_start)) | tee -a "$TIMES"
    fi
    PHASE=$1; phase_start=$now
    [ -n "$PHASE" ] && echo "=== $PHASE ($(date -u +%H:%M:%S))"
    return 0
}

PROXY_PID=
cleanup() {
    local rc=$?
    [ -n "$PROXY_PID" ] && kill "$PROXY_PID" 2>/dev/null || true
    if [ "${KEEP_NODE:-0}" != 1 ] && id "$NODE_USER" >/dev/null 2>&1; then
        userdel -r "$NODE_USER" 2>/dev/null || echo "note: could not remove user $NODE_USER"
    fi
    echo "exit $rc; log $LOG, timings $TIMES"
}
trap cleanup EXIT

# --- 0. the machine: sshd, rsync (Ray's launcher syncs with it), python3-venv --------------
phase "0 packages (openssh-server, rsync, python3-venv)"
missing=()
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v rsync >/dev/null || missing+=(rsync)
/usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi  # Debian's policy-rc.d keeps the package's own sshd from starting on the host

# --- 1. the node: a fresh user, an SSH key, pip config, storage -----------------------------
phase "1 node user, ssh key, pip config"
if id "$NODE_USER" >/dev/null 2>&1; then userdel -r "$NODE_USER" 2>/dev/null || true; fi
useradd -m -s /bin/bash "$NODE_USER"
usermod -p '*' "$NODE_USER"          # no password, but not locked (sshd refuses locked users)
NODE_HOME=$(getent passwd "$NODE_USER" | cut -d: -f6)
mkdir -p "$WORK/client" "$WORK/client-home" "$WORK/tmp" "$WORK/storage"
chmod 1777 "$WORK/tmp"
chown "$NODE_USER:" "$WORK/storage"
KEY=$WORK/client/id_ed25519
ssh-keygen -q -t ed25519 -N '' -f "$KEY" -C "ray-up-local"
ssh-keygen -q -t ed25519 -N '' -f "$WORK/client/ssh_host_ed25519_key"
install -d -m 700 -o "$NODE_USER" -g "$NODE_USER" "$NODE_HOME/.ssh" "$NODE_HOME/.config" \
    "$NODE_HOME/.config/pip"
install -m 600 -o "$NODE_USER" -g "$NODE_USER" "$KEY.pub" "$NODE_HOME/.ssh/authorized_keys"
# this machine's local wheel indexes (how .venv got torch) + the proxy to the package index
{
    [ -f /root/.config/pip/pip.conf ] && cat /root/.config/pip/pip.conf || echo "[global]"
    echo "proxy = http://127.0.0.1:3128"
} > "$NODE_HOME/.config/pip/pip.conf"
chown "$NODE_USER:" "$NODE_HOME/.config/pip/pip.conf"
cat "$NODE_HOME/.config/pip/pip.conf"

cat > "$WORK/client/sshd_config" <<EOF
Port 22
ListenAddress 127.0.0.1
HostKey $WORK/client/ssh_host_ed25519_key
PidFile $WORK/client/sshd.pid
AllowUsers $NODE_USER
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes yes
MaxStartups 50
MaxSessions 50
EOF

# the README's step 1 edits, on a copy: head 127.0.0.1, no workers, the user, the key
CFG=$WORK/cluster.local.yaml
sed -e 's|^  head_ip: .*|  head_ip: 127.0.0.1|' \
    -e 's|^  worker_ips: .*|  worker_ips: []|' \
    -e "s|^  ssh_user: .*|  ssh_user: $NODE_USER|" \
    -e "s|^  # ssh_private_key: .*|  ssh_private_key: $KEY|" \
    "$REPO/cluster.local.yaml" > "$CFG"
for want in "head_ip: 127.0.0.1" "worker_ips: \[\]" "ssh_user: $NODE_USER" "ssh_private_key: $KEY"; do
    grep -q "^  $want\$" "$CFG" || { echo "edit failed: $want" >&2; exit 1; }
done
diff "$REPO/cluster.local.yaml" "$CFG" || true

# --- the index proxy: outside (Unix socket) <- inside (127.0.0.1:3128) ---------------------
cat > "$WORK/client/pipproxy.py" <<'EOF'
"""serve SOCK HOST...: HTTP CONNECT proxy on a Unix socket, to the HOSTs only (port 443).
forward SOCK PORT: 127.0.0.1:PORT -> SOCK (runs inside the network namespace)."""
import asyncio
import sys

ALLOWED = set(sys.argv[3:]) if sys.argv[1] == "serve" else set()


async def pipe(reader, writer, count=None):
    try:
        while data := await reader.read(1 << 16):
            if count is not None:
                count[0] += len(data)
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


async def splice(r1, w1, r2, w2, count=None):
    await asyncio.gather(pipe(r1, w2), pipe(r2, w1, count))
    for w in (w1, w2):
        w.close()


async def connect(reader, writer):
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
        host, _, port = target.rpartition(":")
        if method != "CONNECT" or host not in ALLOWED or port != "443":
            writer.write(b"HTTP/1.1 403 Forbidden\r\n\r\n")
            await writer.drain()
            writer.close()
            return
        ur, uw = await asyncio.open_connection(host, 443)
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        count = [0]
        await splice(reader, writer, ur, uw, count)
        print(f"CONNECT {host} {count[0]} bytes", file=sys.stderr, flush=True)
    except Exception as e:  # noqa: BLE001
        print("proxy:", type(e).__name__, e, file=sys.stderr)
        writer.close()


async def forward(reader, writer):
    ur, uw = await asyncio.open_unix_connection(sys.argv[2])
    await splice(reader, writer, ur, uw)


async def main():
    if sys.argv[1] == "serve":
        server = await asyncio.start_unix_server(connect, sys.argv[2])
    else:
        server = await asyncio.start_server(forward, "127.0.0.1", int(sys.argv[3]))
    async with server:
        await server.serve_forever()


asyncio.run(main())
EOF
SOCK=$WORK/client/pipproxy.sock
# the hosts pip's configuration names, read now (with the environment's PIP_* variables: a
# superset of what the node's pip.conf, a copy of root's, names)
INDEX_HOSTS=$("$REPO/.venv/bin/python" "$REPO/bench/index_hosts.py")
echo "the proxy lets through: ${INDEX_HOSTS//$'\n'/ }"
# shellcheck disable=SC2086  # one argument per host
/usr/bin/python3 "$WORK/client/pipproxy.py" serve "$SOCK" $INDEX_HOSTS 2>>"$WORK/proxy.log" &
PROXY_PID=$!

# --- 2..7: the README steps, inside the namespace --------------------------------------------
cat > "$WORK/client/inner.sh" <<'INNER'
set -uo pipefail
PHASE=; phase_start=$(date +%s)
phase() {
    local now; now=$(date +%s)
    [ -n "$PHASE" ] && printf '%s\t%ss\n' "$PHASE" $((now - phase_start)) | tee -a "$TIMES"
    PHASE=$1; phase_start=$now
    [ -n "$PHASE" ] && echo "=== $PHASE ($(date -u +%H:%M:%S))"
    return 0
}
FAILED=()
step() {  # step DESCRIPTION CMD...: run, record a failure, carry on
    local what=$1; shift
    "$@" || { echo "!!! FAILED ($?): $what"; FAILED+=("$what"); return 1; }
}

ip link set lo up
mount --bind "$WORK/tmp" /tmp                     # our own /tmp/ray, cluster state, ssh sockets
mkdir -p /run/sshd
/usr/bin/python3 "$WORK/client/pipproxy.py" forward "$SOCK" 3128 2>>"$WORK/proxy.log" &
/usr/sbin/sshd -f "$WORK/client/sshd_config" -E "$WORK/sshd.log"
sleep 1
ssh -i "$KEY" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes \
    "$NODE_USER@127.0.0.1" 'echo "ssh ok: $(id -un) on $(hostname), $(python3 --version)"' \
    || { echo "ssh to the node failed"; exit 1; }

# the client side: this repo's .venv, a HOME of its own (no ~/.ray/auth_token from root)
export HOME=$WORK/client-home
# and a temp dir of its own: the local provider keeps its state in $TMPDIR/ray/cluster-*.state
# (root-owned, 755); in /tmp/ray it would stop the node user's `ray start` from making its
# session dir there. Client and node are one machine here, not on a real cluster.
mkdir -p "$WORK/client-tmp"
export TMPDIR=$WORK/client-tmp
unset RAY_ADDRESS RAY_AUTH_MODE RAY_AUTH_TOKEN RAY_AUTH_TOKEN_PATH
source "$REPO/.venv/bin/activate"
cd "$REPO"

phase "README 1: ray up (sync, setup_commands: venv + pip install -e, ray start)"
step "ray up" ray up -y "$CFG" && UP=1 || UP=0

if [ "$UP" = 1 ]; then
    phase "README 2: ray rsync-down the token"
    mkdir -p ~/.ray
    step "rsync-down token" ray rsync-down "$CFG" '~/.ray/auth_token' ~/.ray/handreid-token
    export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$HOME/.ray/handreid-token"
    ls -l ~/.ray/handreid-token

    phase "README 3: ray dashboard (port-forward to 127.0.0.1:$DASH_PORT)"
    # setsid: `ray dashboard` and its `ssh -L` in a process group of their own, ended together
    setsid ray dashboard -p "$DASH_PORT" "$CFG" > "$WORK/dashboard-forward.log" 2>&1 &
    FWD=$!
    for _ in $(seq 60); do  # any HTTP answer: the tunnel is up (unauthenticated ones are 401)
        [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$DASH_PORT/")" != 000 ] && break
        sleep 1
    done
    echo "dashboard without token: HTTP $(curl -s -o /dev/null -w '%{http_code}' \
        "http://127.0.0.1:$DASH_PORT/api/jobs/")"
    echo "dashboard with token:    HTTP $(curl -s -o /dev/null -w '%{http_code}' \
        -H "Authorization: Bearer $(cat ~/.ray/handreid-token)" "http://127.0.0.1:$DASH_PORT/api/jobs/")"
    # `ray up` exports RAY_USAGE_STATS_ENABLED=1 to the head's start commands unless it is run
    # with --disable-usage-stats; the head's own `ray start --disable-usage-stats` must win
    echo "usage stats: $(curl -s -H "Authorization: Bearer $(cat ~/.ray/handreid-token)" \
        "http://127.0.0.1:$DASH_PORT/usage_stats_enabled")"

    phase "README 4: ray job submit (search: $SPACE, $NUM_SAMPLES samples)"
    step "ray job submit" ray job submit --address "http://127.0.0.1:$DASH_PORT" --working-dir . -- \
        handreid-search --space "$SPACE" --num-samples "$NUM_SAMPLES" --name "$NAME" \
        --address auto --storage "$STORAGE" --quiet
    step "job succeeded" bash -c "ray job list --address http://127.0.0.1:$DASH_PORT | tee /dev/stderr | grep -q SUCCEEDED"
    step "trials.csv" test -s "$STORAGE/$NAME/trials.csv" && cat "$STORAGE/$NAME/trials.csv" | cut -c1-200

    phase "README 5: optuna-dashboard on the head"
    # on a one-machine cluster `--port-forward 8080` would bind 8080 on both ends of the tunnel;
    # here the client shares the head's loopback, so the dashboard is queried directly
    # (timeout: ending the local `ray exec` need not end the remote command)
    setsid ray exec "$CFG" "timeout 30 optuna-dashboard --host 127.0.0.1 --port 8080 sqlite:///$STORAGE/$NAME/study.db" \
        > "$WORK/optuna-dashboard.log" 2>&1 &
    OD=$!
    code=000
    for _ in $(seq 50); do
        code=$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8080/api/studies || true)
        [ "$code" = 200 ] && break; sleep 1
    done
    echo "optuna-dashboard /api/studies: HTTP $code"
    [ "$code" = 200 ] || FAILED+=("optuna-dashboard")
    wait "$OD" 2>/dev/null  # the remote timeout ends it

    echo "node venv: $(ray exec "$CFG" 'python -c "import torch, ray; print(\"torch\", torch.__version__, \"ray\", ray.__version__)"' 2>/dev/null | grep '^torch')"

    phase "README 6: handreid-report on the head, rsync-down the report"
    step "handreid-report" ray exec "$CFG" "handreid-report $STORAGE/$NAME"
    step "rsync-down report" ray rsync-down "$CFG" "$STORAGE/$NAME/report/" "$WORK/rayup-report/"
    ls -l "$WORK/rayup-report/" || true

    kill -- -"$FWD" 2>/dev/null; wait "$FWD" 2>/dev/null
fi

phase "README 7: ray down"
step "ray down" ray down -y "$CFG"
sleep 2
echo "--- processes left in the namespace after ray down:"
ps -eo pid,user,args | grep -v -E 'ps -eo|grep' | grep -E 'ray|raylet|gcs_server|dashboard' || echo "(no ray processes)"
phase ""
[ ${#FAILED[@]} -eq 0 ] && { echo "ALL STEPS OK"; exit 0; }
printf 'FAILED: %s\n' "${FAILED[@]}"; exit 1
INNER

export REPO WORK TIMES KEY SOCK NODE_USER CFG SPACE NUM_SAMPLES NAME DASH_PORT
export STORAGE=$WORK/storage
phase ""
rc=0
unshare --pid --fork --mount-proc --net bash "$WORK/client/inner.sh" || rc=$?

awk '/^CONNECT/ {n++; b[$2]+=$3} END {for (h in b) printf "via the index proxy: %s %.1f MB\n", h, b[h]/1e6; print n+0, "connections"}' \
    "$WORK/proxy.log"
echo "--- after the namespace: processes of $NODE_USER or of $WORK (expect none)"
ps -eo pid,user,args | grep -v -E 'ps -eo|grep' | grep -E "^ *[0-9]+ +$NODE_USER |$WORK" \
    | grep -v -e "pipproxy.py serve" -e "tee -a $LOG" || echo "(none)"
echo "total: $(( $(date +%s) - t0 ))s" | tee -a "$TIMES"
exit $rc
