//! Seeds the upstream through its push API: a layer of pseudo-random bytes (so nothing along the
//! way can compress it), a config and an OCI image manifest tagged `bench`.

use sha2::{Digest as _, Sha256};

use crate::error::{BenchError, Result};

pub const REPO: &str = "bench/layer";
pub const TAG: &str = "bench";
pub const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// What the upstream holds after seeding.
pub struct Seeded {
    pub layer_digest: String,
    pub layer_size: u64,
    pub manifest_digest: String,
}

/// xorshift64*: fast, deterministic and incompressible enough for a transfer benchmark.
fn pseudo_random(len: usize, mut state: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

async fn push_blob(client: &reqwest::Client, base: &str, data: Vec<u8>) -> Result<String> {
    let digest = sha256(&data);
    let start = client
        .post(format!("{base}/v2/{REPO}/blobs/uploads/"))
        .send()
        .await
        .map_err(BenchError::http("start blob upload"))?;
    if start.status().as_u16() != 202 {
        return Err(BenchError::Status { what: "start blob upload".into(), status: start.status().as_u16() });
    }
    let location = start
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| BenchError::Other("upload has no Location".into()))?
        .to_owned();
    let location = if location.starts_with('/') { format!("{base}{location}") } else { location };
    let sep = if location.contains('?') { '&' } else { '?' };
    let put = client
        .put(format!("{location}{sep}digest={digest}"))
        .header("content-type", "application/octet-stream")
        .body(data)
        .send()
        .await
        .map_err(BenchError::http("finish blob upload"))?;
    if put.status().as_u16() != 201 {
        return Err(BenchError::Status { what: format!("finish upload of {digest}"), status: put.status().as_u16() });
    }
    Ok(digest)
}

pub async fn seed(client: &reqwest::Client, base: &str, layer_size: usize) -> Result<Seeded> {
    let layer = pseudo_random(layer_size, 0x9E37_79B9_7F4A_7C15);
    let layer_digest = push_blob(client, base, layer).await?;
    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#.to_vec();
    let config_size = config.len();
    let config_digest = push_blob(client, base, config).await?;
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{MANIFEST_TYPE}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{config_size}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer_digest}","size":{layer_size}}}]}}"#
    );
    let manifest_digest = sha256(manifest.as_bytes());
    let put = client
        .put(format!("{base}/v2/{REPO}/manifests/{TAG}"))
        .header("content-type", MANIFEST_TYPE)
        .body(manifest)
        .send()
        .await
        .map_err(BenchError::http("push manifest"))?;
    if put.status().as_u16() != 201 {
        return Err(BenchError::Status { what: "push manifest".into(), status: put.status().as_u16() });
    }
    Ok(Seeded { layer_digest, layer_size: layer_size as u64, manifest_digest })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudo_random_is_deterministic_and_sized() {
        assert_eq!(pseudo_random(13, 1), pseudo_random(13, 1));
        assert_eq!(pseudo_random(13, 1).len(), 13);
        assert_ne!(pseudo_random(64, 1), pseudo_random(64, 2));
    }
}
