#!/usr/bin/env bash
# A private Postfix instance on loopback that relays everything to a local
# receiver and answers "421 try again later" for one recipient domain, to
# rehearse a throttling mailbox provider with a real MTA.
#
#   deploy/local/postfix-relay.sh DIR PORT RELAY_PORT DOMAIN   start it
#   deploy/local/postfix-relay.sh DIR lift                      stop answering 421
#   deploy/local/postfix-relay.sh DIR stop                      stop it
#
# Needs Debian's postfix package and root (Postfix drops to its own users).
set -euo pipefail

DIR="$1"
case "${2:-}" in
  lift)
    : >"$DIR/access" && postmap -c "$DIR" "$DIR/access" && postfix -c "$DIR" reload >/dev/null 2>&1
    echo "postfix-relay: 421 lifted"
    exit 0 ;;
  stop)
    postfix -c "$DIR" stop >/dev/null 2>&1 || true
    exit 0 ;;
esac
PORT="$2" RELAY_PORT="$3" DOMAIN="$4"

mkdir -p "$DIR"
cat >"$DIR/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $DIR/queue
data_directory = $DIR/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
mail_owner = postfix
setgid_group = postdrop
maillog_file_prefixes = $DIR
maillog_file = $DIR/maillog
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = relay.broadside.test
mydestination =
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:$RELAY_PORT
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_recipient_restrictions = check_recipient_access hash:$DIR/access, permit_mynetworks, reject
smtp_tls_security_level = none
smtpd_tls_security_level = none
in_flow_delay = 0
default_process_limit = 300
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
relay_destination_concurrency_limit = 50
smtp_connection_cache_on_demand = yes
EOF
cat >"$DIR/master.cf" <<EOF
127.0.0.1:$PORT inet n - n - - smtpd
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
showq      unix n - n - - showq
error      unix - - n - - error
retry      unix - - n - - error
discard    unix - - n - - discard
local      unix - n n - - local
anvil      unix - - n - 1 anvil
scache     unix - - n - 1 scache
postlog    unix-dgram n - n - 1 postlogd
EOF
echo "$DOMAIN 421 4.7.0 $DOMAIN is throttling, try again later" >"$DIR/access"
postmap -c "$DIR" "$DIR/access"
mkdir -p "$DIR/queue" "$DIR/data"
chown postfix "$DIR/data"
postfix -c "$DIR" check >/dev/null 2>&1 || true # creates the queue directories
postfix -c "$DIR" start >/dev/null 2>&1 || { postfix -c "$DIR" check; exit 1; }
for _ in $(seq 1 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && { echo "postfix-relay: listening on 127.0.0.1:$PORT, 421 for $DOMAIN"; exit 0; }
  sleep 0.1
done
echo "postfix-relay: did not listen on $PORT (see $DIR/maillog)" >&2
exit 1
