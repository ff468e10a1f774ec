#!/usr/bin/env bash
# A private Postfix instance on loopback that generates real DSNs and hands
# them to Broadside's inbound LMTP listener, as a production MX for the
# bounce domain would:
#   - local.test: local delivery; every user is unknown, so Postfix bounces (5.1.1);
#   - refuse.test: relayed to a second listener that answers 550 5.1.1 at RCPT;
#   - BOUNCE_DOMAIN: the VERP return paths, through a transport map to
#     lmtp:inet:127.0.0.1:LMTP_PORT (Broadside's feedback.inbound_addr);
#   - everything else: relayed to 127.0.0.1:SINK_PORT (an smtp-sink).
#
#   deploy/local/postfix-bounce.sh DIR PORT BOUNCE_DOMAIN LMTP_PORT SINK_PORT   start it
#   deploy/local/postfix-bounce.sh DIR stop                                     stop it
#
# Needs Debian's postfix package and root (Postfix drops to its own users).
set -euo pipefail
. "$(dirname "$0")/postfix-common.sh"

DIR="$1"
if [ "${2:-}" = stop ]; then
  postfix -c "$DIR" stop >/dev/null 2>&1 || true
  exit 0
fi
PORT="$2" BOUNCE_DOMAIN="$3" LMTP_PORT="$4" SINK_PORT="$5"
REFUSER_PORT=$((PORT + 1))

mkdir -p "$DIR"
cat >"$DIR/main.cf" <<CF
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
mydestination = local.test
local_recipient_maps =
alias_maps =
alias_database =
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:$SINK_PORT
transport_maps = hash:$DIR/transport
smtpd_relay_restrictions = permit_mynetworks, reject
refuser_restrictions = check_recipient_access hash:$DIR/refuse, reject
smtp_dns_support_level = disabled
smtp_tls_security_level = none
smtpd_tls_security_level = none
in_flow_delay = 0
queue_run_delay = 1s
minimal_backoff_time = 1s
CF
{
  echo "127.0.0.1:$PORT inet n - n - - smtpd"
  echo "127.0.0.1:$REFUSER_PORT inet n - n - - smtpd -o myhostname=refuser.broadside.test -o smtpd_recipient_restrictions=\$refuser_restrictions -o smtpd_relay_restrictions="
  postfix_services
} >"$DIR/master.cf"
printf '%s\n' "refuse.test smtp:[127.0.0.1]:$REFUSER_PORT" "$BOUNCE_DOMAIN lmtp:inet:127.0.0.1:$LMTP_PORT" >"$DIR/transport"
echo "refuse.test 550 5.1.1 User unknown in virtual mailbox table" >"$DIR/refuse"
postmap -c "$DIR" "$DIR/transport"
postmap -c "$DIR" "$DIR/refuse"
postfix_start "$DIR" "$PORT" postfix-bounce
echo "postfix-bounce: listening on 127.0.0.1:$PORT, DSNs for $BOUNCE_DOMAIN to LMTP 127.0.0.1:$LMTP_PORT"
