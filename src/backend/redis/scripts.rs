//! The Lua scripts herald runs in Redis, and the keys they touch.
//!
//! Each script runs atomically, which is what keeps one order everywhere: the publish
//! script takes IDs, appends to the channel streams and publishes the events in one step,
//! so no two nodes can interleave between "take an ID" and "publish it".
//!
//! Keys, all under `backend.redis.key_prefix` (`P`):
//! - `P seq`: the last ID assigned; `P epoch`: the first ID of this data set (a Redis that
//!   came back empty has a new one, so older IDs are known to be unknown);
//! - `P s:<channel>`: the channel's stream. One entry per publish call and channel: the
//!   call's events of that channel, entry ID `<its last event's id>-0`, field `m` their
//!   complete SSE encodings one after the other, field `p` the ID of the channel's event
//!   before the first, and, when it holds more than one, field `n` their number. The
//!   `p` of the oldest entry a node loads is exactly the newest event it does not have,
//!   trimmed or outside the window: the gap floor, with no bookkeeping of what trimming
//!   removed. A node splits an entry at its events' blank lines (the oldest entry may
//!   begin at or below the ID it loads after: the hub skips what it has);
//! - `P last`: hash, channel -> its newest ID (the `p` of its next entry);
//! - `P tally`: hash, channel -> events ever appended to its stream; `P marks:<channel>`:
//!   list of `<tally>:<entry id>`, one for each entry that took the tally past a multiple
//!   of `history.max_events / 4`. Trimming by count uses them: at a new mark, every entry
//!   up to the newest mark with at least `max_events` events after it goes (`XTRIM
//!   MINID ~`, whole nodes). A stream keeps at least `max_events` events and about a
//!   quarter more plus one call's, however many events its entries hold (a plain
//!   `MAXLEN` counts entries, not events). Trimming by age is `XTRIM MINID ~` at every
//!   call;
//! - `P active`: sorted set, channel -> newest ID, to find streams idle past `max_age`;
//! - `P removed_floor`: newest ID of any idle stream deleted (the floor for channels
//!   Redis no longer knows);
//! - pub/sub channel `P events`: one message per publish script, its events in order,
//!   each as `<channel>\n<encoding>` (an encoding ends with its blank line); and
//!   barriers `!<node>:<n>` that a node sends itself.
//!
//! Two scripts publish. `PUBLISH_PREPARED` takes IDs the node proposes, with the stream
//! entries and the pub/sub message the node built for them: it checks that they continue
//! the sequence (after `seq`, the caller's newest ID and the epoch, and within a second
//! of Redis's clock), and stores and sends the bytes as given, or refuses and writes
//! nothing. `PUBLISH` assigns the IDs itself and builds the same bytes in Lua; a node
//! uses it after a refusal (another node took IDs in between: with one publishing node,
//! never). Both go through `append` for the streams. What Redis spends is mostly Lua's
//! string work: every string a script makes or receives is copied and hashed, so
//! building each event's `id:` line and encoding in Lua (`PUBLISH`) costs ~4.5 times
//! what taking them ready (`PUBLISH_PREPARED`) does, per batched event of a call of
//! 1,000: 2.5 against 0.55 µs here (`bench/lua_cost.py --layout v3|prepared --events
//! 1000`). One `XADD` per channel and call rather than per event is the rest of it.
//!
//! Rolling upgrades: the pub/sub message is as before, so live events flow between
//! nodes of both versions. A node of the version before this layout loads an entry of
//! several events as one event (the encodings, each with its `id:` line, under the
//! entry's ID): its clients get every event, and one that resumes from inside such an
//! entry on that node gets the entry's earlier events again.
//!
//! IDs are `max(last + 1, Redis TIME in microseconds, the caller's newest ID + 1)` when
//! Redis assigns them, and a node proposes `max(its newest known ID + 1, its clock)`,
//! taken only within a second of Redis's clock: they never go backwards, not after a
//! herald restart and not after Redis restarts empty, and they stay comparable with the
//! memory backend's microsecond IDs. Lua numbers are doubles: exact up to 2^53
//! microseconds, the year 2255.

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
    pub tally: String,
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
            tally: key("tally"),
            events: key("events"),
        }
    }

    pub fn stream(&self, channel: &str) -> String {
        format!("{}s:{channel}", self.prefix)
    }

    pub fn marks(&self, channel: &str) -> String {
        format!("{}marks:{channel}", self.prefix)
    }
}

// Every script gets the same six first keys (seq, epoch, last, removed_floor, active,
// tally; `RedisBackend::invocation`) and the caller's newest ID as `ARGV[1]`.

/// Shared by every script: the time, and the epoch of this data set (created on first use).
const PRELUDE: &str = r#"
-- '%d' formats through a C long (64 bits here): exact for IDs, and far cheaper than
-- '%.0f', which takes glibc's multi-precision float printing for every event.
local function num(s) return string.format('%d', s) end
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

/// Shared by the two publish scripts: `append(order, entry_of, events_of, newest_of)`
/// appends each channel's entry to its stream. `order[j]` is the j-th channel (its
/// stream `KEYS[5 + 2j]`, its marks `KEYS[6 + 2j]`), `entry_of` its entry (the
/// encodings), `events_of` the number of events in it, `newest_of` the ID of its last.
/// ARGV[2] and ARGV[3] are max_events and max_age_us.
const APPEND: &str = r#"
-- Trim by count: note this entry as a mark when it takes the tally past a multiple of
-- `step`, and drop every entry up to the newest mark with at least max_events events
-- after it.
local function trim_to_count(stream, marks, total, s, max_events)
  redis.call('RPUSH', marks, num(total) .. ':' .. s)
  local list = redis.call('LRANGE', marks, 0, -1)
  for k = #list, 1, -1 do
    local at, mark = string.match(list[k], '^(%d+):(%d+)$')
    if total - tonumber(at) >= max_events then
      redis.call('XTRIM', stream, 'MINID', '~', num(tonumber(mark) + 1))
      redis.call('LTRIM', marks, k, -1)
      return
    end
  end
end
local function append(order, entry_of, events_of, newest_of)
  local call = redis.call
  local max_events = tonumber(ARGV[2])
  local step = math.max(1, math.ceil(max_events / 4))
  local min_id = num(now - tonumber(ARGV[3]))
  local removed
  for from = 1, #order, 500 do
    local to = math.min(from + 499, #order)
    -- Each channel's newest ID (the `p` of its entry) and its tally. A channel Redis
    -- does not know (new, or swept when idle) may have had events up to the removed
    -- floor: its first entry says so, and resumes from below get a reset.
    local prevs = call('HMGET', KEYS[3], unpack(order, from, to))
    local tallies = call('HMGET', KEYS[6], unpack(order, from, to))
    local newest, tally, scores = {}, {}, {}
    local m = 0
    for j = from, to do
      local channel = order[j]
      local stream = KEYS[5 + 2 * j]
      local prev = prevs[j - from + 1]
      if not prev then
        removed = removed or call('GET', KEYS[4]) or '0'
        prev = removed
      end
      local s, events = newest_of[channel], events_of[channel]
      if events == 1 then
        call('XADD', stream, s, 'm', entry_of[channel], 'p', prev)
      else
        call('XADD', stream, s, 'm', entry_of[channel], 'p', prev, 'n', events)
      end
      local before = tonumber(tallies[j - from + 1] or '0')
      local total = before + events
      if math.floor(total / step) > math.floor(before / step) then
        trim_to_count(stream, KEYS[6 + 2 * j], total, s, max_events)
      end
      call('XTRIM', stream, 'MINID', '~', min_id)
      newest[m + 1] = channel
      newest[m + 2] = s
      tally[m + 1] = channel
      tally[m + 2] = num(total)
      scores[m + 1] = s
      scores[m + 2] = channel
      m = m + 2
    end
    call('HSET', KEYS[3], unpack(newest))
    call('HSET', KEYS[6], unpack(tally))
    call('ZADD', KEYS[5], unpack(scores))
  end
end
"#;

/// KEYS: the common ones, then the stream and the marks of each channel of the call,
/// once, in the order the channels first appear among the events.
/// ARGV: caller's newest ID, max_events, max_age_us, pub/sub channel, then per event its
/// channel and its encoding without the `id:` line.
/// Returns {epoch, first ID}: the events have the IDs first, first + 1, ... in order.
const PUBLISH: &str = r#"
local id = math.max(last + 1, now, floor + 1)
local first = num(id)
-- Pieces, joined once each by table.concat: no copy of each event per step.
local order, pieces, newest_of, message = {}, {}, {}, {}
local n = 0
for i = 5, #ARGV, 2 do
  local channel = ARGV[i]
  local mine = pieces[channel]
  if mine == nil then
    mine = {}
    pieces[channel] = mine
    order[#order + 1] = channel
  end
  local s = num(id)
  local encoded = 'id: ' .. s .. '\n' .. ARGV[i + 1]
  mine[#mine + 1] = encoded
  newest_of[channel] = s
  message[n + 1] = channel
  message[n + 2] = '\n'
  message[n + 3] = encoded
  n = n + 3
  id = id + 1
end
local entry_of, events_of = {}, {}
for j = 1, #order do
  local mine = pieces[order[j]]
  events_of[order[j]] = #mine
  entry_of[order[j]] = table.concat(mine)
end
append(order, entry_of, events_of, newest_of)
redis.call('PUBLISH', ARGV[4], table.concat(message))
redis.call('SET', KEYS[1], num(id - 1))
return {epoch, first}
"#;

/// The node's own IDs: as `PUBLISH`, with the entries and the message built by the
/// caller for IDs it proposes, so Redis does no work per event beyond the bytes.
/// KEYS: as `PUBLISH`.
/// ARGV: caller's newest ID, max_events, max_age_us, pub/sub channel, the first ID
/// proposed, the number of events, the message, then per channel its name, its entry,
/// the number of events in it and the ID of its last.
/// Returns {epoch, first ID}, or {epoch, 0, last ID} when the proposal does not continue
/// the sequence (another node took IDs since) or strays more than a second from Redis's
/// clock: nothing was written, and the caller publishes with `PUBLISH` instead.
const PUBLISH_PREPARED: &str = r#"
local first = tonumber(ARGV[5])
if first <= last or first <= floor or first < tonumber(epoch)
    or first < now - 1000000 or first > math.max(last + 1, now) + 1000000 then
  return {epoch, '0', num(last)}
end
local order, entry_of, events_of, newest_of = {}, {}, {}, {}
for i = 8, #ARGV, 4 do
  local channel = ARGV[i]
  order[#order + 1] = channel
  entry_of[channel] = ARGV[i + 1]
  events_of[channel] = tonumber(ARGV[i + 2])
  newest_of[channel] = ARGV[i + 3]
end
append(order, entry_of, events_of, newest_of)
redis.call('PUBLISH', ARGV[4], ARGV[7])
redis.call('SET', KEYS[1], num(first + tonumber(ARGV[6]) - 1))
return {epoch, ARGV[5]}
"#;

/// KEYS: the common ones, then one stream per channel.
/// ARGV: caller's newest ID, max_events, max_age_us, then per channel its name and the
/// ID to load after (0: all that is retained).
/// Returns {epoch, seq, then per channel: floor, {entry, entry, ...}}: the newest
/// entries after that ID and younger than `max_age`, oldest first, holding at least
/// `max_events` events if the stream has them (the caller splits them and keeps the
/// newest `max_events` after the ID), and the `p` of the oldest.
const LOAD: &str = r#"
local max_events = tonumber(ARGV[2])
local min_id = now - tonumber(ARGV[3])
local removed = tonumber(redis.call('GET', KEYS[4]) or '0')
local out = {epoch, num(last)}
for i = 1, #KEYS - 6 do
  local key = KEYS[6 + i]
  local channel = ARGV[2 + 2 * i]
  local after = tonumber(ARGV[3 + 2 * i])
  local from = num(math.max(after + 1, min_id)) .. '-0'
  -- Newest first, until the entries hold max_events events: a page of one, then pages
  -- sized by the last entry's events (an entry holds one or a publish call's `n`).
  local entries, events = {}, 0
  local top, page = '+', 1
  while events < max_events do
    local got = redis.call('XREVRANGE', key, top, from, 'COUNT', page)
    for j = 1, #got do
      entries[#entries + 1] = got[j]
      events = events + tonumber(got[j][2][6] or '1')
    end
    if #got < page then
      break
    end
    top = '(' .. got[#got][1]
    page = math.ceil((max_events - events) / tonumber(got[#got][2][6] or '1'))
  end
  local floor_id
  if #entries > 0 then
    floor_id = tonumber(entries[#entries][2][4] or '0')
  else
    floor_id = tonumber(redis.call('HGET', KEYS[3], channel) or removed)
  end
  local flat = {}
  for j = #entries, 1, -1 do
    flat[#flat + 1] = entries[j][2][2]
  end
  out[#out + 1] = num(floor_id)
  out[#out + 1] = flat
end
return out
"#;

/// KEYS: the common ones.
/// ARGV: caller's newest ID, max_age_us, stream key prefix, most streams to delete,
/// marks key prefix.
/// Deletes streams whose newest event is older than max_age; returns how many.
const SWEEP: &str = r#"
local cutoff = num(now - tonumber(ARGV[2]))
local idle = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', '(' .. cutoff,
  'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[4]))
local removed = tonumber(redis.call('GET', KEYS[4]) or '0')
for i = 1, #idle, 2 do
  local channel = idle[i]
  redis.call('DEL', ARGV[3] .. channel, ARGV[5] .. channel)
  redis.call('HDEL', KEYS[3], channel)
  redis.call('HDEL', KEYS[6], channel)
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
    pub publish_prepared: Script,
    pub load: Script,
    pub sweep: Script,
}

impl Scripts {
    pub fn new() -> Self {
        let with_prelude = |body: &str| Script::new(&format!("{PRELUDE}{body}"));
        Self {
            publish: Script::new(&format!("{PRELUDE}{APPEND}{PUBLISH}")),
            publish_prepared: Script::new(&format!("{PRELUDE}{APPEND}{PUBLISH_PREPARED}")),
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
