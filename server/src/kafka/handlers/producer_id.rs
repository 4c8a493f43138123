//! InitProducerId for idempotent producers: a producer id that is never reused, and epoch 0.
//!
//! Runs on the core that took the request. Ids come from the core's block, refilled from the
//! controller (core 0), which records every block in the metadata log before handing it out,
//! so ids survive restarts without reuse. Re-initializing a known id (KIP-360, v3+) bumps its
//! epoch; the partitions then fence the old epoch (`producer_state`).
//!
//! Transactional ids are refused until the transaction coordinator exists; the coordinator
//! will own the `transactional.id` -> producer id mapping in its own internal topic and call
//! the same allocation.

use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use super::admin::{controller_gone, on_controller};
use crate::kafka::errors::KafkaError;
use crate::shard::Shard;

/// InitProducerId.
pub async fn handle(shard: &Rc<Shard>, req: InitProducerIdRequest) -> InitProducerIdResponse {
    let fail = |e: KafkaError| {
        InitProducerIdResponse::default()
            .with_error_code(e.code())
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
    };
    if req.transactional_id.is_some() {
        return fail(KafkaError::new(
            ResponseError::TransactionalIdAuthorizationFailed,
            "transactions are not supported yet",
        ));
    }
    // KIP-360: a producer that knows its id asks for the next epoch.
    if req.producer_id.0 >= 0 && req.producer_epoch >= 0 && req.producer_epoch < i16::MAX - 1 {
        return InitProducerIdResponse::default()
            .with_producer_id(req.producer_id)
            .with_producer_epoch(req.producer_epoch + 1);
    }
    match next_producer_id(shard).await {
        Ok(id) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(0),
        Err(e) => fail(e),
    }
}

/// The next producer id of this core's block, fetching a new block when it is used up.
pub async fn next_producer_id(shard: &Rc<Shard>) -> Result<i64, KafkaError> {
    loop {
        if let Some(id) = shard.producer_ids.borrow_mut().next() {
            return Ok(id);
        }
        let count = shard.config.limits.producer_id_block_size;
        let block = on_controller(shard, Err(controller_gone()), move |c, s| async move {
            c.allocate_producer_ids(&s, count).await
        })
        .await?;
        // Another request on this core may have refilled first; the newer block wins and the
        // older one's unused ids are simply never handed out.
        *shard.producer_ids.borrow_mut() = block;
    }
}
