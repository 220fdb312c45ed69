//! The PersistentVolumeClaim for `storage.persistentVolume`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, PersistentVolumeClaimSpec, VolumeResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::{ChildNames, child_meta};
use crate::crd::DependencyProxy;

/// The claim, or `None` when the cache is in an object store.
pub fn pvc(dp: &DependencyProxy) -> Option<PersistentVolumeClaim> {
    let pv = dp.spec.storage.persistent_volume.as_ref()?;
    Some(PersistentVolumeClaim {
        metadata: child_meta(dp, &ChildNames::of(dp).pvc),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(pv.access_modes.iter().map(|m| m.as_str().to_owned()).collect()),
            storage_class_name: pv.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_owned(), Quantity(pv.size.clone()))])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures::{pv_proxy, s3_proxy};

    #[test]
    fn claim_follows_the_spec() {
        let claim = pvc(&pv_proxy()).unwrap();
        assert_eq!(claim.metadata.name.as_deref(), Some("acme-cache"));
        let spec = claim.spec.unwrap();
        assert_eq!(spec.access_modes, Some(vec!["ReadWriteOnce".to_owned()]));
        assert_eq!(spec.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(spec.resources.unwrap().requests.unwrap()["storage"], Quantity("10Gi".into()));
    }

    #[test]
    fn no_claim_for_object_storage() {
        assert!(pvc(&s3_proxy()).is_none());
    }
}
