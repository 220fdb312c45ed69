//! Images written by code: deterministic tar layers, configs, manifests, OCI indexes and Docker
//! manifest lists, laid out on disk and pushed with skopeo so that the registry holds exactly the
//! bytes (and so the digests and media types) the test chose.
//!
//! OCI media types go through an OCI image layout (`oci:<dir>:<tag>`); Docker media types through
//! skopeo's `dir:` layout, because containers/image's OCI layout reader only accepts OCI media
//! types in `index.json`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::{PseudoRandom, Skopeo, sha256_digest};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// The Accept list a Docker/containerd client sends.
pub const ACCEPT_ALL: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

#[derive(Debug, Clone)]
enum BlobData {
    Mem(Vec<u8>),
    File(PathBuf),
}

/// A content-addressed blob (layer or config).
#[derive(Debug, Clone)]
pub struct Blob {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    /// sha256 of the uncompressed tar (for layers).
    pub diff_id: String,
    data: BlobData,
}

impl Blob {
    fn mem(media_type: &str, data: Vec<u8>, diff_id: String) -> Self {
        Self {
            media_type: media_type.into(),
            digest: sha256_digest(&data),
            size: data.len() as u64,
            diff_id,
            data: BlobData::Mem(data),
        }
    }

    /// A gzip-compressed tar layer holding `files` (path, contents).
    pub fn layer(files: &[(&str, &[u8])], docker: bool) -> Self {
        let tar = tar_archive(files);
        let diff_id = sha256_digest(&tar);
        Self::mem(if docker { DOCKER_LAYER_GZIP } else { OCI_LAYER_GZIP }, gzip(&tar), diff_id)
    }

    /// A gzip layer with one file of `size` pseudo-random (incompressible) bytes.
    pub fn random_layer(seed: u64, size: usize, docker: bool) -> Self {
        let data = PseudoRandom::bytes(seed, size);
        Self::layer(&[(&format!("random-{seed}.bin"), &data)], docker)
    }

    /// An uncompressed tar layer of at least `size` bytes written straight to `path` (streamed,
    /// never held in memory): one file of pseudo-random bytes. The digest is computed by
    /// `openssl dgst` (or `sha256sum`), because a debug build's sha256 takes over a minute a GiB.
    pub fn big_layer_file(path: &Path, size: u64, docker: bool) -> Self {
        let payload = size.saturating_sub(1536).max(1);
        let mut out = BufWriter::with_capacity(1 << 20, File::create(path).unwrap());
        out.write_all(&tar_header("big.bin", payload)).unwrap();
        // One pseudo-random MiB, stamped with its block number so no two blocks are equal.
        let mut buf = PseudoRandom::bytes(0xB16, 1 << 20);
        let mut left = payload;
        let mut block = 0u64;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            buf[..8].copy_from_slice(&block.to_le_bytes());
            out.write_all(&buf[..n]).unwrap();
            left -= n as u64;
            block += 1;
        }
        let pad = (512 - (payload % 512) as usize) % 512;
        out.write_all(&vec![0u8; pad + 1024]).unwrap();
        out.flush().unwrap();
        drop(out);
        let digest = file_sha256(path);
        Self {
            media_type: if docker { DOCKER_LAYER_TAR } else { OCI_LAYER_TAR }.into(),
            digest: digest.clone(),
            size: std::fs::metadata(path).unwrap().len(),
            diff_id: digest,
            data: BlobData::File(path.to_owned()),
        }
    }

    /// The blob's bytes (reads the file for file-backed blobs: only for small ones).
    pub fn bytes(&self) -> Vec<u8> {
        match &self.data {
            BlobData::Mem(v) => v.clone(),
            BlobData::File(p) => std::fs::read(p).unwrap(),
        }
    }

    fn hex(&self) -> &str {
        self.digest.strip_prefix("sha256:").unwrap()
    }

    fn write_to(&self, path: &Path) {
        match &self.data {
            BlobData::Mem(v) => std::fs::write(path, v).unwrap(),
            BlobData::File(p) => {
                if std::fs::hard_link(p, path).is_err() {
                    std::fs::copy(p, path).unwrap();
                }
            }
        }
    }

    fn descriptor(&self) -> serde_json::Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size})
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn new(os: &str, architecture: &str) -> Self {
        Self { os: os.into(), architecture: architecture.into(), variant: None }
    }
    pub fn amd64() -> Self {
        Self::new("linux", "amd64")
    }
    pub fn arm64() -> Self {
        Self { variant: Some("v8".into()), ..Self::new("linux", "arm64") }
    }
    fn json(&self) -> serde_json::Value {
        let mut v = json!({"architecture": self.architecture, "os": self.os});
        if let Some(var) = &self.variant {
            v["variant"] = json!(var);
        }
        v
    }
}

/// One image: config, layers and the manifest bytes.
#[derive(Debug, Clone)]
pub struct Image {
    pub platform: Platform,
    pub config: Blob,
    pub layers: Vec<Blob>,
    pub manifest: Vec<u8>,
    pub media_type: String,
    pub digest: String,
}

impl Image {
    /// Builds an image; `label` goes into the config so that otherwise equal images differ.
    pub fn new(platform: Platform, layers: Vec<Blob>, docker: bool, label: &str) -> Self {
        let diff_ids: Vec<&str> = layers.iter().map(|l| l.diff_id.as_str()).collect();
        let mut config = json!({
            "created": "1970-01-01T00:00:00Z",
            "architecture": platform.architecture,
            "os": platform.os,
            "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                       "Cmd": ["/hello"], "Labels": {"dependency-proxy.test": label}},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": layers.iter().map(|_| json!({"created": "1970-01-01T00:00:00Z", "created_by": "integration-tests"})).collect::<Vec<_>>(),
        });
        if let Some(v) = &platform.variant {
            config["variant"] = json!(v);
        }
        let config = Blob::mem(
            if docker { DOCKER_CONFIG } else { OCI_CONFIG },
            serde_json::to_vec(&config).unwrap(),
            String::new(),
        );
        let media_type = if docker { DOCKER_MANIFEST } else { OCI_MANIFEST };
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": config.descriptor(),
            "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
        }))
        .unwrap();
        let digest = sha256_digest(&manifest);
        Self { platform, config, layers, manifest, media_type: media_type.into(), digest }
    }

    /// A small single-platform OCI (or Docker schema2) image with two gzip layers.
    pub fn simple(label: &str, docker: bool) -> Self {
        let l1 = Blob::layer(&[("hello", format!("hello from {label}\n").as_bytes())], docker);
        let l2 = Blob::random_layer(seed_of(label), 64 * 1024, docker);
        Self::new(Platform::amd64(), vec![l1, l2], docker, label)
    }
}

fn seed_of(label: &str) -> u64 {
    label.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// An OCI image index or Docker manifest list over several images.
#[derive(Debug, Clone)]
pub struct Index {
    pub images: Vec<Image>,
    pub bytes: Vec<u8>,
    pub media_type: String,
    pub digest: String,
}

impl Index {
    pub fn new(images: Vec<Image>, docker: bool) -> Self {
        let media_type = if docker { DOCKER_LIST } else { OCI_INDEX };
        let manifests: Vec<_> = images
            .iter()
            .map(|i| json!({"mediaType": i.media_type, "digest": i.digest, "size": i.manifest.len(), "platform": i.platform.json()}))
            .collect();
        let bytes =
            serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": media_type, "manifests": manifests})).unwrap();
        let digest = sha256_digest(&bytes);
        Self { images, bytes, media_type: media_type.into(), digest }
    }

    /// linux/amd64 + linux/arm64/v8, each with its own layers.
    pub fn two_platforms(label: &str, docker: bool) -> Self {
        let images = [Platform::amd64(), Platform::arm64()]
            .into_iter()
            .map(|p| {
                let tag = format!("{label}-{}", p.architecture);
                let l = Blob::layer(&[("arch", p.architecture.as_bytes()), ("label", tag.as_bytes())], docker);
                let r = Blob::random_layer(seed_of(&tag), 32 * 1024, docker);
                Image::new(p, vec![l, r], docker, &tag)
            })
            .collect();
        Self::new(images, docker)
    }
}

/// What gets pushed under a tag: one image or an index.
#[derive(Debug, Clone)]
pub enum Artifact {
    Image(Image),
    Index(Index),
}

impl From<Image> for Artifact {
    fn from(i: Image) -> Self {
        Artifact::Image(i)
    }
}

impl From<Index> for Artifact {
    fn from(i: Index) -> Self {
        Artifact::Index(i)
    }
}

impl Artifact {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Artifact::Image(i) => &i.manifest,
            Artifact::Index(i) => &i.bytes,
        }
    }

    pub fn digest(&self) -> &str {
        match self {
            Artifact::Image(i) => &i.digest,
            Artifact::Index(i) => &i.digest,
        }
    }

    pub fn media_type(&self) -> &str {
        match self {
            Artifact::Image(i) => &i.media_type,
            Artifact::Index(i) => &i.media_type,
        }
    }

    pub fn images(&self) -> Vec<&Image> {
        match self {
            Artifact::Image(i) => vec![i],
            Artifact::Index(i) => i.images.iter().collect(),
        }
    }

    /// Every config and layer, each digest once.
    pub fn blobs(&self) -> Vec<&Blob> {
        let mut seen = BTreeMap::new();
        for img in self.images() {
            for b in std::iter::once(&img.config).chain(&img.layers) {
                seen.entry(b.digest.clone()).or_insert(b);
            }
        }
        seen.into_values().collect()
    }

    fn is_docker(&self) -> bool {
        self.media_type().starts_with("application/vnd.docker.")
    }

    /// Writes an OCI image layout with `tag` naming the top manifest.
    pub fn write_oci_layout(&self, dir: &Path, tag: &str) {
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        for b in self.blobs() {
            b.write_to(&blobs.join(b.hex()));
        }
        for img in self.images() {
            std::fs::write(blobs.join(&img.digest[7..]), &img.manifest).unwrap();
        }
        std::fs::write(blobs.join(&self.digest()[7..]), self.bytes()).unwrap();
        let index = json!({"schemaVersion": 2, "manifests": [{
            "mediaType": self.media_type(), "digest": self.digest(), "size": self.bytes().len(),
            "annotations": {"org.opencontainers.image.ref.name": tag}}]});
        std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    }

    /// Writes skopeo's `dir:` layout (format 1.1, which carries manifest lists).
    pub fn write_dir_layout(&self, dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("version"), "Directory Transport Version: 1.1\n").unwrap();
        std::fs::write(dir.join("manifest.json"), self.bytes()).unwrap();
        if let Artifact::Index(i) = self {
            for img in &i.images {
                std::fs::write(dir.join(format!("{}.manifest.json", &img.digest[7..])), &img.manifest).unwrap();
            }
        }
        for b in self.blobs() {
            b.write_to(&dir.join(b.hex()));
        }
    }

    /// Pushes to `registry_host` (`127.0.0.1:<port>`) as `name:tag` with skopeo, preserving every
    /// digest, and checks that the registry now serves exactly these manifest bytes.
    pub fn push(&self, registry_host: &str, name: &str, tag: &str) {
        let skopeo = Skopeo::new();
        let work = tempfile::Builder::new().prefix("it-push-").tempdir().unwrap();
        let src = if self.is_docker() {
            self.write_dir_layout(&work.path().join("dir"));
            format!("dir:{}", work.path().join("dir").display())
        } else {
            self.write_oci_layout(&work.path().join("oci"), tag);
            format!("oci:{}:{tag}", work.path().join("oci").display())
        };
        let dest = format!("docker://{registry_host}/{name}:{tag}");
        skopeo
            .run(&["copy", "--all", "--preserve-digests", "--dest-tls-verify=false", &src, &dest])
            .unwrap_or_else(|e| panic!("pushing {name}:{tag}: {e}"));
        let raw = skopeo.inspect_raw(&format!("docker://{registry_host}/{name}:{tag}")).unwrap();
        assert_eq!(sha256_digest(&raw), self.digest(), "registry holds other manifest bytes for {name}:{tag}");
    }
}

/// A deterministic ustar archive (mtime 0, root-owned, mode 0644) of regular files.
pub fn tar_archive(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data) in files {
        out.extend_from_slice(&tar_header(name, data.len() as u64));
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

fn tar_header(name: &str, size: u64) -> [u8; 512] {
    assert!(name.len() < 100, "tar name too long: {name}");
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    let octal = |h: &mut [u8; 512], off: usize, width: usize, v: u64| {
        let s = format!("{:0w$o}", v, w = width - 1);
        h[off..off + width - 1].copy_from_slice(s.as_bytes());
    };
    octal(&mut h, 100, 8, 0o644);
    octal(&mut h, 108, 8, 0);
    octal(&mut h, 116, 8, 0);
    octal(&mut h, 124, 12, size);
    octal(&mut h, 136, 12, 0);
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

/// `sha256:<hex>` of a file, by `openssl dgst -sha256` or else `sha256sum`.
pub fn file_sha256(path: &Path) -> String {
    let out = std::process::Command::new("openssl").args(["dgst", "-sha256", "-r"]).arg(path).output();
    let out = match out {
        Ok(o) if o.status.success() => o,
        _ => std::process::Command::new("sha256sum").arg(path).output().expect("run sha256sum"),
    };
    assert!(out.status.success(), "hashing {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text.split_whitespace().next().unwrap_or_default();
    assert_eq!(hex.len(), 64, "unexpected hash output {text:?}");
    format!("sha256:{hex}")
}

/// Deterministic gzip (no name, mtime 0).
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::GzBuilder::new().mtime(0).write(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// Decompresses gzip (to check a layer's content).
pub fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data).read_to_end(&mut out).unwrap();
    out
}
