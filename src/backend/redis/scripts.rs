//! The Lua scripts herald runs in Redis, and the keys they touch.
//!
//! Each script runs atomically, which is what keeps one order everywhere: the publish
//! script takes IDs, appends to the channel streams and publishes the events in one step,
//! so no two nodes can interleave between "take an ID" and "publish it".
//!
//! Keys, all under `backend.redis.key_prefix` (`P`):
//! - `P seq`: the last ID assigned; `P epoch`: the first ID of this data set (a Redis that
//!   came back empty has a new one, so older IDs are known to be unknown);
//! - `P s:<channel>`: the channel's stream, entry IDs `<event id>-0`, field `m` the
//!   complete SSE encoding and field `p` the ID of the channel's event before it;
//!   trimmed (approximately, whole nodes at a time: cheap) to `history.max_events` and
//!   `history.max_age`. The `p` of the oldest event a node loads is exactly the newest
//!   one it does not have, trimmed or outside the window: the gap floor, with no
//!   bookkeeping of what trimming removed;
//! - `P last`: hash, channel -> its newest ID (the `p` of its next event);
//! - `P active`: sorted set, channel -> newest ID, to find streams idle past `max_age`;
//! - `P removed_floor`: newest ID of any idle stream deleted (the floor for channels
//!   Redis no longer knows);
//! - pub/sub channel `P events`: one message per publish script, its events in order,
//!   each as `<channel>\n<encoding>` (an encoding ends with its blank line); and
//!   barriers `!<node>:<n>` that a node sends itself.
//!
//! What a publish costs Redis is mostly its commands: per event one `XADD` (the trim to
//! `max_events` only on each channel's last event of the call: the stream only grows
//! within a call, so that drops the same whole nodes), per channel of the call one
//! `XTRIM` (age), and per call `TIME`, `GET`s, one `HMGET`, `HSET`, `ZADD` and `PUBLISH`
//! for all its channels, and `SET`; the answer is the first ID only. (Storing and
//! publishing the encoding without its `id:` line would save building one Lua string per
//! event, a further 11 % of Redis's instructions per batched event (callgrind: 27.2k to
//! 24.1k; 32.6k before these changes), but changes what nodes exchange: nodes of
//! two versions could then not share a Redis during a rolling upgrade.)
//!
//! IDs are `max(last + 1, Redis TIME in microseconds, the caller's newest ID + 1)`: they
//! never go backwards, not after a herald restart and not after Redis restarts empty, and
//! they stay comparable with the memory backend's microsecond IDs. Lua numbers are
//! doubles: exact up to 2^53 microseconds, the year 2255.

use redis::Script;

/// Key and channel names under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    pub prefix: String,
    pub seq: String,
    pub epoch: String,
    pub last: String,
    pub active: String,
    pub removed_floor: String,
    pub events: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        let key = |name: &str| format!("{prefix}{name}");
        Self {
            prefix: prefix.to_string(),
            seq: key("seq"),
            epoch: key("epoch"),
            last: key("last"),
            active: key("active"),
            removed_floor: key("removed_floor"),
            events: key("events"),
        }
    }

    pub fn stream(&self, channel: &str) -> String {
        format!("{}s:{channel}", self.prefix)
    }
}

// Every script gets the same five first keys (seq, epoch, last, removed_floor, active;
// `RedisBackend::invocation`) and the caller's newest ID as `ARGV[1]`.

/// Shared by every script: the time, and the epoch of this data set (created on first use).
const PRELUDE: &str = r#"
-- '%d' formats through a C long (64 bits here): exact for IDs, and far cheaper than
-- '%.0f', which takes glibc's multi-precision float printing for every event.
local function num(s) return string.format('%d', s) end
local function sid(entry_id) return tonumber(string.match(entry_id, '^(%d+)')) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
local floor = tonumber(ARGV[1])
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  epoch = num(math.max(last + 1, now, floor + 1))
  redis.call('SET', KEYS[2], epoch)
end
"#;

/// KEYS: the common ones, then the stream of each channel of the call, once, in the
/// order the channels first appear among the events.
/// ARGV: caller's newest ID, max_events, max_age_us, pub/sub channel, then per event its
/// channel and its encoding without the `id:` line.
/// Returns {epoch, first ID}: the events have the IDs first, first + 1, ... in order.
const PUBLISH: &str = r#"
local call = redis.call
-- As given (a string): a Lua number would be converted back for every XADD.
local max_events = ARGV[2]
local min_id = num(now - tonumber(ARGV[3]))
local id = math.max(last + 1, now, floor + 1)
-- Each channel's stream key, and the position in ARGV of its last event.
local key_of, last_at, order = {}, {}, {}
local channels = 0
for i = 5, #ARGV, 2 do
  local channel = ARGV[i]
  if key_of[channel] == nil then
    channels = channels + 1
    order[channels] = channel
    key_of[channel] = KEYS[5 + channels]
  end
  last_at[channel] = i
end
-- Each channel's newest ID, the `p` of its next event. A channel Redis does not know
-- (new, or swept when idle) may have had events up to the removed floor: its first event
-- says so, and resumes from below get a reset.
local newest = {}
local removed
for from = 1, channels, 1000 do
  local to = math.min(from + 999, channels)
  local prevs = call('HMGET', KEYS[3], unpack(order, from, to))
  for j = from, to do
    local prev = prevs[j - from + 1]
    if not prev then
      removed = removed or call('GET', KEYS[4]) or '0'
      prev = removed
    end
    newest[order[j]] = prev
  end
end
local first = num(id)
-- Pieces, joined once by the table.concat below: no copy of each event per step.
local message = {}
local n = 0
for i = 5, #ARGV, 2 do
  local channel = ARGV[i]
  local s = num(id)
  local encoded = 'id: ' .. s .. '\n' .. ARGV[i + 1]
  if last_at[channel] == i then
    -- Trimming to max_events once per channel, at its last event, drops the same whole
    -- nodes a trim at every event would: the stream only grows within the call.
    call('XADD', key_of[channel], 'MAXLEN', '~', max_events, s, 'm', encoded, 'p', newest[channel])
  else
    call('XADD', key_of[channel], s, 'm', encoded, 'p', newest[channel])
  end
  newest[channel] = s
  message[n + 1] = channel
  message[n + 2] = '\n'
  message[n + 3] = encoded
  n = n + 3
  id = id + 1
end
for from = 1, channels, 500 do
  local to = math.min(from + 499, channels)
  local fields, scores = {}, {}
  local m = 0
  for j = from, to do
    local channel = order[j]
    local s = newest[channel]
    fields[m + 1] = channel
    fields[m + 2] = s
    scores[m + 1] = s
    scores[m + 2] = channel
    m = m + 2
    call('XTRIM', key_of[channel], 'MINID', '~', min_id)
  end
  call('HSET', KEYS[3], unpack(fields))
  call('ZADD', KEYS[5], unpack(scores))
end
call('PUBLISH', ARGV[4], table.concat(message))
call('SET', KEYS[1], num(id - 1))
return {epoch, first}
"#;

/// KEYS: the common ones, then one stream per channel.
/// ARGV: caller's newest ID, max_events, max_age_us, then per channel its name and the
/// ID to load after (0: all that is retained).
/// Returns {epoch, seq, then per channel: floor, {id, encoding, id, encoding, ...}}: the
/// newest `max_events` events after that ID and younger than `max_age`, oldest first,
/// and the ID of the newest event before them (what a resume from below it misses).
const LOAD: &str = r#"
local max_events = tonumber(ARGV[2])
local min_id = now - tonumber(ARGV[3])
local removed = tonumber(redis.call('GET', KEYS[4]) or '0')
local out = {epoch, num(last)}
for i = 1, #KEYS - 5 do
  local key = KEYS[5 + i]
  local channel = ARGV[2 + 2 * i]
  local after = tonumber(ARGV[3 + 2 * i])
  local from = num(math.max(after + 1, min_id))
  local entries = redis.call('XREVRANGE', key, '+', from .. '-0', 'COUNT', max_events)
  local floor_id
  if #entries > 0 then
    floor_id = tonumber(entries[#entries][2][4] or '0')
  else
    floor_id = tonumber(redis.call('HGET', KEYS[3], channel) or removed)
  end
  local flat = {}
  for j = #entries, 1, -1 do
    flat[#flat + 1] = num(sid(entries[j][1]))
    flat[#flat + 1] = entries[j][2][2]
  end
  out[#out + 1] = num(floor_id)
  out[#out + 1] = flat
end
return out
"#;

/// KEYS: the common ones.
/// ARGV: caller's newest ID, max_age_us, stream key prefix, most streams to delete.
/// Deletes streams whose newest event is older than max_age; returns how many.
const SWEEP: &str = r#"
local cutoff = num(now - tonumber(ARGV[2]))
local idle = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', '(' .. cutoff,
  'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[4]))
local removed = tonumber(redis.call('GET', KEYS[4]) or '0')
for i = 1, #idle, 2 do
  local channel = idle[i]
  redis.call('DEL', ARGV[3] .. channel)
  redis.call('HDEL', KEYS[3], channel)
  redis.call('ZREM', KEYS[5], channel)
  removed = math.max(removed, tonumber(idle[i + 1]))
end
if #idle > 0 then
  redis.call('SET', KEYS[4], num(removed))
end
return #idle / 2
"#;

pub struct Scripts {
    pub publish: Script,
    pub load: Script,
    pub sweep: Script,
}

impl Scripts {
    pub fn new() -> Self {
        let with_prelude = |body: &str| Script::new(&format!("{PRELUDE}{body}"));
        Self {
            publish: with_prelude(PUBLISH),
            load: with_prelude(LOAD),
            sweep: with_prelude(SWEEP),
        }
    }
}

impl Default for Scripts {
    fn default() -> Self {
        Self::new()
    }
}
