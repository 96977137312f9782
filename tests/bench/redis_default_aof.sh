#!/bin/bash
# What survives a Redis restart of kombu's unacked entries, for each way of setting `default`
# (docs/redis-acl.md). Runs inside a throwaway container of the base image, e.g.:
#   docker run -d --name h5-probe --label io.github.celery-toolkit.project=h5-probe \
#     --entrypoint sleep celery-toolkit/debian:bookworm infinity
#   docker exec h5-probe sh -c 'apt-get update -qq && apt-get install -y -qq redis-server'
#   docker cp tests/bench/redis_default_aof.sh h5-probe:/probe.sh
#   docker exec h5-probe /probe.sh          # every variant, SIGTERM and SIGKILL
#   docker rm -f h5-probe
# An ACL user `app` pushes 100 messages, takes 40 the way kombu does (BRPOP, then MULTI, ZADD
# unacked_index, HSET unacked, EXEC); Redis (AOF everysec) is stopped and started again.
set -u

variant_rules() {
  case $1 in
    on-all) echo 'user default on >admin-password-0123 ~* &* +@all' ;;
    on-notdangerous) echo 'user default on >admin-password-0123 ~* &* +@all -@dangerous' ;;
    on-pingonly) echo 'user default on >admin-password-0123 resetkeys resetchannels -@all +ping' ;;
    off) echo 'user default off' ;;
    off-all) printf '%s\n' 'requirepass admin-password-0123' 'user default off ~* &* +@all' ;;
  esac
}

probe() {
  local variant=$1 stop=$2 d=/tmp/r-$1-$2 pid before after
  rm -rf "$d" && mkdir -p "$d"
  cat >"$d/redis.conf" <<CONF
port 0
unixsocket $d/redis.sock
dir $d
daemonize yes
pidfile $d/redis.pid
logfile $d/redis.log
appendonly yes
appendfilename "appendonly.aof"
appendfsync everysec
aof-use-rdb-preamble yes
save ""
$(variant_rules "$variant")
user app on >app-password-0123 ~* &* +@all -@dangerous
CONF
  cli() { redis-cli -s "$d/redis.sock" --user app --pass app-password-0123 --no-auth-warning "$@"; }
  counts() { echo "q=$(cli LLEN q) unacked=$(cli HLEN unacked) index=$(cli ZCARD unacked_index)"; }
  redis-server "$d/redis.conf" && sleep 0.5
  for i in $(seq 1 100); do echo "LPUSH q msg$i"; done | cli >/dev/null
  for i in $(seq 1 40); do
    m=$(cli BRPOP q 1 | tail -1)
    printf 'MULTI\nZADD unacked_index %s tag%s\nHSET unacked tag%s %s\nEXEC\n' "$(date +%s)" "$i" "$i" "$m"
  done | cli >/dev/null
  before=$(counts)
  sleep 2  # appendfsync everysec
  pid=$(cat "$d/redis.pid")
  if [ "$stop" = kill ]; then kill -9 "$pid"; else kill -TERM "$pid"; fi
  # a container whose PID 1 does not reap leaves a zombie: gone is enough
  while kill -0 "$pid" 2>/dev/null && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null; do sleep 0.1; done
  redis-server "$d/redis.conf" && sleep 1
  after=$(counts)
  echo "$(redis-server --version | grep -o 'v=[0-9.]*') default=$variant stop=$stop before: $before after: $after"
  kill -TERM "$(cat "$d/redis.pid")"
}

for variant in on-all on-notdangerous on-pingonly off off-all; do
  for stop in term kill; do probe "$variant" "$stop"; done
done
