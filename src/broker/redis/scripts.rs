//! The Lua scripts every write to Redis is (`lua/`), each atomic.

use redis::Script;

/// Every script, loaded into Redis whenever the node (re)connects, so no
/// call is the one that finds a script missing (redis-rs would load it
/// then and call it again: a second round trip that another call could
/// overtake).
pub(super) struct Scripts {
    pub(super) publish: Script,
    pub(super) join: Script,
    pub(super) track: Script,
    pub(super) untrack: Script,
    pub(super) reap: Script,
    pub(super) open_stream: Script,
    pub(super) forward: Script,
    pub(super) occupancy: Script,
}

impl Scripts {
    pub(super) fn all(&self) -> [&Script; 8] {
        [
            &self.publish,
            &self.join,
            &self.track,
            &self.untrack,
            &self.reap,
            &self.open_stream,
            &self.forward,
            &self.occupancy,
        ]
    }

    pub(super) fn new() -> Self {
        Scripts {
            publish: Script::new(concat!(
                include_str!("lua/epoch.lua"),
                include_str!("lua/publish.lua")
            )),
            join: Script::new(concat!(
                include_str!("lua/epoch.lua"),
                include_str!("lua/join.lua")
            )),
            track: Script::new(include_str!("lua/track.lua")),
            untrack: Script::new(include_str!("lua/untrack.lua")),
            reap: Script::new(include_str!("lua/reap.lua")),
            open_stream: Script::new(include_str!("lua/open_stream.lua")),
            forward: Script::new(include_str!("lua/forward.lua")),
            occupancy: Script::new(include_str!("lua/occupancy.lua")),
        }
    }
}
