//! The ConfigMap holding the proxy's rendered `config.toml`.

use std::collections::BTreeMap;

use dependency_proxy::config::CONFIG_FILE_KEY;
use k8s_openapi::api::core::v1::ConfigMap;

use super::{ChildNames, child_meta};
use crate::crd::DependencyProxy;

/// The ConfigMap for an already rendered configuration (rendered once, so the Deployment's
/// config hash is of exactly these bytes).
pub fn config_map(dp: &DependencyProxy, rendered: &str) -> ConfigMap {
    ConfigMap {
        metadata: child_meta(dp, &ChildNames::of(dp).config_map),
        data: Some(BTreeMap::from([(CONFIG_FILE_KEY.to_owned(), rendered.to_owned())])),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::config::proxy_config;
    use crate::build::fixtures::pv_proxy;
    use dependency_proxy::config::Config;

    #[test]
    fn holds_the_proxy_config_under_its_key() {
        let dp = pv_proxy();
        let rendered = proxy_config(&dp.spec).unwrap().to_toml();
        let cm = config_map(&dp, &rendered);
        assert_eq!(cm.metadata.name.as_deref(), Some("acme-config"));
        let text = &cm.data.unwrap()[CONFIG_FILE_KEY];
        assert_eq!(Config::from_toml(text).unwrap().groups, vec!["acme"]);
    }
}
