//! The GoRouter stand-in for tests: [`grouter_standin::StandIn`] (the one `grouter demo`
//! runs as a process), behind a `start` that panics when it cannot bind, as fixtures may.
//!
//! See the stand-in's module docs for what it answers; every response carries
//! `X-Stub-Site`.

use std::ops::Deref;

use grouter_standin::StandIn;

/// A running stand-in; stops when dropped. Dereferences to [`StandIn`] (`addr()`,
/// `set_healthy()`, `stop()`, `requests()`).
#[derive(Debug)]
pub struct GoRouterStub(StandIn);

impl GoRouterStub {
    /// Start a stand-in for a GoRouter of `site` on a loopback port.
    pub async fn start(site: &str) -> GoRouterStub {
        GoRouterStub(
            StandIn::start(site)
                .await
                .expect("bind the GoRouter stand-in"),
        )
    }
}

impl Deref for GoRouterStub {
    type Target = StandIn;

    fn deref(&self) -> &StandIn {
        &self.0
    }
}
