//! The store's Lua scripts, each behind the shared prelude (`lua/common.lua`). They run with
//! EVALSHA, loaded again on a Redis that does not know them (after its restart, say).

use redis::Script;

const COMMON: &str = include_str!("lua/common.lua");

fn script(body: &str) -> Script {
    Script::new(&format!("{COMMON}\n{body}"))
}

/// One of each script; cheap to clone.
#[derive(Clone)]
pub struct Scripts {
    pub admit: Script,
    pub activate: Script,
    pub finish: Script,
    pub remove: Script,
    pub deliver: Script,
    pub ack: Script,
    pub read: Script,
    pub migrate: Script,
    pub update: Script,
    pub sweep: Script,
    pub detach_node: Script,
    pub claim_node: Script,
    pub node_gone: Script,
    pub nodes: Script,
    pub session_write: Script,
    pub session_read: Script,
    pub session_remove: Script,
    pub events: Script,
}

impl Scripts {
    pub fn new() -> Scripts {
        Scripts {
            admit: script(include_str!("lua/admit.lua")),
            activate: script(include_str!("lua/activate.lua")),
            finish: script(include_str!("lua/finish.lua")),
            remove: script(include_str!("lua/remove.lua")),
            deliver: script(include_str!("lua/deliver.lua")),
            ack: script(include_str!("lua/ack.lua")),
            read: script(include_str!("lua/read.lua")),
            migrate: script(include_str!("lua/migrate.lua")),
            update: script(include_str!("lua/update.lua")),
            sweep: script(include_str!("lua/sweep.lua")),
            detach_node: script(include_str!("lua/detach_node.lua")),
            claim_node: script(include_str!("lua/claim_node.lua")),
            node_gone: script(include_str!("lua/node_gone.lua")),
            nodes: script(include_str!("lua/nodes.lua")),
            session_write: script(include_str!("lua/session_write.lua")),
            session_read: script(include_str!("lua/session_read.lua")),
            session_remove: script(include_str!("lua/session_remove.lua")),
            events: script(include_str!("lua/events.lua")),
        }
    }
}

impl Default for Scripts {
    fn default() -> Self {
        Scripts::new()
    }
}
