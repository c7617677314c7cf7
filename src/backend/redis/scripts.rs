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
//!   complete SSE encoding; trimmed to `history.max_events` and `history.max_age`;
//! - `P evicted`: hash, channel -> newest ID trimmed from its stream (the gap floor);
//! - `P active`: sorted set, channel -> newest ID, to find streams idle past `max_age`;
//! - `P removed_floor`: newest ID of any idle stream deleted (the floor for channels
//!   Redis no longer knows);
//! - pub/sub channel `P events`: every event as `<channel>\n<encoding>`, and barriers
//!   `!<node>:<n>` that a node sends itself.
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
    pub evicted: String,
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
            evicted: key("evicted"),
            active: key("active"),
            removed_floor: key("removed_floor"),
            events: key("events"),
        }
    }

    pub fn stream(&self, channel: &str) -> String {
        format!("{}s:{channel}", self.prefix)
    }
}

/// Shared by every script: the time, and the epoch of this data set (created on first use).
const PRELUDE: &str = r#"
local function num(s) return string.format('%.0f', s) end
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

/// KEYS: seq, epoch, evicted, active, then one stream per event.
/// ARGV: caller's newest ID, max_events, max_age_us, pub/sub channel, then per event its
/// channel and its encoding without the `id:` line.
/// Returns {epoch, id, id, ...}.
const PUBLISH: &str = r#"
local max_events = tonumber(ARGV[2])
local min_id = num(now - tonumber(ARGV[3]))
local id = math.max(last + 1, now, floor + 1)
local out = {epoch}
for i = 1, #KEYS - 4 do
  local key = KEYS[4 + i]
  local channel = ARGV[3 + 2 * i]
  local s = num(id)
  local encoded = 'id: ' .. s .. '\n' .. ARGV[4 + 2 * i]
  -- The newest ID trimmed, for the gap floor. The oldest entry is one cheap read; a
  -- reverse range below min_id scans the stream, so it runs only when something aged.
  local cut = 0
  local oldest = redis.call('XRANGE', key, '-', '+', 'COUNT', 1)[1]
  local over = redis.call('XLEN', key) - max_events + 1
  if over == 1 then
    cut = sid(oldest[1])
  elseif over > 1 then
    local gone = redis.call('XRANGE', key, '-', '+', 'COUNT', over)
    cut = sid(gone[#gone][1])
  end
  redis.call('XADD', key, 'MAXLEN', max_events, s .. '-0', 'm', encoded)
  if oldest and sid(oldest[1]) < tonumber(min_id) then
    local old = redis.call('XREVRANGE', key, '(' .. min_id .. '-0', '-', 'COUNT', 1)
    if old[1] then
      cut = math.max(cut, sid(old[1][1]))
      redis.call('XTRIM', key, 'MINID', min_id .. '-0')
    end
  end
  if cut > 0 then
    redis.call('HSET', KEYS[3], channel, num(cut))
  end
  redis.call('ZADD', KEYS[4], id, channel)
  redis.call('PUBLISH', ARGV[4], channel .. '\n' .. encoded)
  out[#out + 1] = s
  id = id + 1
end
redis.call('SET', KEYS[1], num(id - 1))
return out
"#;

/// KEYS: seq, epoch, evicted, removed_floor, then one stream per channel.
/// ARGV: caller's newest ID, max_events, max_age_us, then per channel its name and the
/// ID to load after (0: all that is retained).
/// Returns {epoch, seq, then per channel: floor, {id, encoding, id, encoding, ...}}.
const LOAD: &str = r#"
local max_events = tonumber(ARGV[2])
local min_id = now - tonumber(ARGV[3])
local removed = tonumber(redis.call('GET', KEYS[4]) or '0')
local out = {epoch, num(last)}
for i = 1, #KEYS - 4 do
  local key = KEYS[4 + i]
  local channel = ARGV[2 + 2 * i]
  local after = tonumber(ARGV[3 + 2 * i])
  local from = num(math.max(after + 1, min_id))
  local floor_id = math.max(removed, tonumber(redis.call('HGET', KEYS[3], channel) or '0'))
  local stale = redis.call('XREVRANGE', key, '(' .. from .. '-0', '-', 'COUNT', 1)
  if stale[1] and sid(stale[1][1]) > after then
    floor_id = math.max(floor_id, sid(stale[1][1]))
  end
  local flat = {}
  for _, e in ipairs(redis.call('XRANGE', key, from .. '-0', '+', 'COUNT', max_events)) do
    flat[#flat + 1] = num(sid(e[1]))
    flat[#flat + 1] = e[2][2]
  end
  out[#out + 1] = num(floor_id)
  out[#out + 1] = flat
end
return out
"#;

/// KEYS: seq, epoch, evicted, removed_floor, active.
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
