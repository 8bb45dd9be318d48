//! Objects decoded one at a time. kube's typed watcher fails a whole LIST (and so every object of
//! the kind, until the bad one goes) when one object does not fit its type — a field of the wrong
//! type kept from an older schema, say. Wrapped in [`Decoded`], such an object is set aside with
//! what can be read of it, and the others are watched as usual.

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::de::{Deserialize, DeserializeOwned, Deserializer};

/// An object of kind `K`, or the metadata of one that does not decode as `K`.
#[derive(Clone, Debug)]
pub enum Decoded<K> {
    /// The object.
    Object(K),
    /// An object that does not decode, with its metadata (as far as it decodes) and why.
    Undecodable {
        /// Name, namespace, resourceVersion, … (empty if the metadata itself is unreadable).
        meta: Box<ObjectMeta>,
        /// The decoding error.
        error: String,
    },
}

impl<'de, K: DeserializeOwned> Deserialize<'de> for Decoded<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Buffered first: a typed decode cannot be retried on a stream.
        let value = serde_json::Value::deserialize(deserializer)?;
        Ok(match K::deserialize(&value) {
            Ok(object) => Decoded::Object(object),
            Err(e) => Decoded::Undecodable {
                meta: Box::new(
                    value
                        .get("metadata")
                        .and_then(|m| ObjectMeta::deserialize(m).ok())
                        .unwrap_or_default(),
                ),
                error: e.to_string(),
            },
        })
    }
}

impl<K: Resource> Resource for Decoded<K> {
    type DynamicType = K::DynamicType;
    type Scope = K::Scope;

    fn kind(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::kind(dt)
    }

    fn group(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::group(dt)
    }

    fn version(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::version(dt)
    }

    fn api_version(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::api_version(dt)
    }

    fn plural(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        match self {
            Decoded::Object(object) => object.meta(),
            Decoded::Undecodable { meta, .. } => meta,
        }
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Decoded::Object(object) => object.meta_mut(),
            Decoded::Undecodable { meta, .. } => meta,
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::Deployment;
    use kube::ResourceExt as _;

    use super::*;

    #[test]
    fn a_bad_object_keeps_its_metadata_and_says_why() {
        let list: Vec<Decoded<Deployment>> = serde_json::from_str(
            r#"[{"metadata": {"name": "good", "namespace": "a", "resourceVersion": "7"}, "spec": {"replicas": 2,
                  "selector": {}, "template": {}}},
                {"metadata": {"name": "bad", "namespace": "a", "resourceVersion": "8"}, "spec": {"replicas": "three",
                  "selector": {}, "template": {}}},
                {"metadata": {"name": 5}}]"#,
        )
        .unwrap();
        assert!(matches!(&list[0], Decoded::Object(d) if d.spec.as_ref().unwrap().replicas == Some(2)));
        let Decoded::Undecodable { meta, error } = &list[1] else {
            panic!("{:?}", list[1]);
        };
        assert_eq!(
            (meta.name.as_deref(), meta.resource_version.as_deref()),
            (Some("bad"), Some("8"))
        );
        assert!(error.contains("three"), "{error}");
        assert_eq!(list[1].name_any(), "bad", "Resource reads the metadata kept");
        assert!(matches!(&list[2], Decoded::Undecodable { meta, .. } if meta.name.is_none()));
        assert_eq!(Decoded::<Deployment>::plural(&()), "deployments");
        assert_eq!(Decoded::<Deployment>::api_version(&()), "apps/v1");
    }
}
