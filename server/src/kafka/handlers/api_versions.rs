//! ApiVersions: the APIs and version ranges this broker serves.
//!
//! Only the fields Kafka itself sends are set: librdkafka 2.0.2 (Debian's kcat) misreads
//! tagged fields with default values, so no optional tagged field is filled in.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse};

use super::supported_versions;

fn ranges() -> Vec<ApiVersion> {
    let mut out = Vec::new();
    for key in 0..i16::MAX {
        let Ok(api) = ApiKey::try_from(key) else {
            if key > 100 {
                break;
            }
            continue;
        };
        if let Some((min, max)) = supported_versions(api) {
            out.push(
                ApiVersion::default()
                    .with_api_key(key)
                    .with_min_version(min)
                    .with_max_version(max),
            );
        }
    }
    out
}

/// The normal response.
pub fn handle() -> ApiVersionsResponse {
    ApiVersionsResponse::default().with_api_keys(ranges())
}

/// The response to an ApiVersions version this broker does not serve: UNSUPPORTED_VERSION
/// with the ranges, so the client can pick one.
pub fn unsupported_version() -> ApiVersionsResponse {
    ApiVersionsResponse::default()
        .with_error_code(ResponseError::UnsupportedVersion.code())
        .with_api_keys(ranges())
}
