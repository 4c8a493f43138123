//! The Kafka listener of one core. Every core binds the same address (glommio sets
//! SO_REUSEPORT), so the kernel spreads connections over cores.

use std::rc::Rc;

use glommio::net::TcpListener;

use crate::shard::Shard;

/// A bound listener.
pub struct Listener {
    inner: TcpListener,
}

impl Listener {
    /// Binds the configured Kafka address on this core.
    pub fn bind(shard: &Shard) -> Result<Listener, String> {
        let addr = shard.config.kafka_addr;
        let inner = TcpListener::bind(addr).map_err(|e| format!("binding {addr}: {e}"))?;
        if shard.id.0 == 0 {
            tracing::info!(addr = %addr, "listening for Kafka clients");
        }
        Ok(Listener { inner })
    }

    /// Accepts connections until the task is dropped.
    pub async fn run(self, shard: Rc<Shard>) {
        loop {
            let stream = match self.inner.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            };
            if shard.connections.get() >= shard.config.limits.connections_per_core_max {
                tracing::warn!(
                    limit = shard.config.limits.connections_per_core_max,
                    "too many connections; closing a new one"
                );
                drop(stream);
                continue;
            }
            let _ = stream.set_nodelay(true);
            let s = shard.clone();
            glommio::spawn_local(async move {
                s.connections.set(s.connections.get() + 1);
                super::connection::serve(s.clone(), stream).await;
                s.connections.set(s.connections.get() - 1);
            })
            .detach();
        }
    }
}
