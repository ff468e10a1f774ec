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
. "$(dirname "$0")/postfix-common.sh"

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
{ echo "127.0.0.1:$PORT inet n - n - - smtpd"; postfix_services; } >"$DIR/master.cf"
echo "$DOMAIN 421 4.7.0 $DOMAIN is throttling, try again later" >"$DIR/access"
postmap -c "$DIR" "$DIR/access"
postfix_start "$DIR" "$PORT" postfix-relay
echo "postfix-relay: listening on 127.0.0.1:$PORT, 421 for $DOMAIN"
