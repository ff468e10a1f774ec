# Sourced by the scripts that run private Postfix instances on loopback
# (postfix-relay.sh, postfix-bounce.sh, services/feedback/fixtures/generate.sh).

# The master.cf services every instance needs, after its own listeners.
postfix_services() {
  cat <<'CF'
pickup     unix n - n 60 1 pickup
cleanup    unix n - n - 0 cleanup
qmgr       unix n - n 300 1 qmgr
rewrite    unix - - n - - trivial-rewrite
bounce     unix - - n - 0 bounce
defer      unix - - n - 0 bounce
trace      unix - - n - 0 bounce
verify     unix - - n - 1 verify
flush      unix n - n 1000? 0 flush
proxymap   unix - - n - - proxymap
proxywrite unix - - n - 1 proxymap
smtp       unix - - n - - smtp
relay      unix - - n - - smtp
lmtp       unix - - n - - lmtp
showq      unix n - n - - showq
error      unix - - n - - error
retry      unix - - n - - error
discard    unix - - n - - discard
local      unix - n n - - local
virtual    unix - n n - - virtual
anvil      unix - - n - 1 anvil
scache     unix - - n - 1 scache
postlog    unix-dgram n - n - 1 postlogd
CF
}

# postfix_start DIR PORT NAME: creates the queue, starts the instance and
# waits until it listens on PORT; on failure says why and returns 1.
postfix_start() {
  local dir="$1" port="$2" name="$3"
  mkdir -p "$dir/queue" "$dir/data"
  chown postfix "$dir/data"
  postfix -c "$dir" check >/dev/null 2>&1 || true # creates the queue directories
  if ! postfix -c "$dir" start >/dev/null 2>&1; then
    postfix -c "$dir" check
    tail -n 20 "$dir/maillog" >&2 2>/dev/null || true
    return 1
  fi
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "$name: Postfix did not listen on $port (see $dir/maillog)" >&2
  return 1
}
