//! `meta.k8s.io` Tables: what `kubectl get` prints, with each row's object as
//! `PartialObjectMetadata` (or whole, or not at all) as `?includeObject=` asks.

use flotilla_api::ApiError;
use flotilla_api::resource::ResourceDef;
use jiff::Timestamp;
use serde_json::{Value, json};

use crate::error::Result;
use crate::registry::Stored;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum IncludeObject {
    None,
    #[default]
    Metadata,
    Object,
}

impl IncludeObject {
    pub(crate) fn parse(value: Option<&str>) -> Result<Self> {
        match value {
            None | Some("Metadata") => Ok(IncludeObject::Metadata),
            Some("None") => Ok(IncludeObject::None),
            Some("Object") => Ok(IncludeObject::Object),
            Some(other) => Err(ApiError::bad_request(format!(
                "includeObject must be one of None, Metadata, Object, not {other:?}"
            ))
            .into()),
        }
    }
}

/// List metadata for the Table's own `metadata`.
#[derive(Debug, Default)]
pub(crate) struct ListMeta {
    pub(crate) resource_version: String,
    pub(crate) continue_token: Option<String>,
    pub(crate) remaining: Option<u64>,
}

/// A Table of `objects`, as stored.
pub(crate) fn table(
    def: &ResourceDef,
    objects: &[Stored],
    version: &str,
    include: IncludeObject,
    meta: ListMeta,
) -> Result<Value> {
    let objects = objects.iter().map(Stored::value).collect::<Result<Vec<Value>>>()?;
    table_of(def, objects, version, include, meta)
}

/// A Table of `objects`.
pub(crate) fn table_of(
    def: &ResourceDef,
    objects: Vec<Value>,
    version: &str,
    include: IncludeObject,
    meta: ListMeta,
) -> Result<Value> {
    let now = Timestamp::now();
    let mut rows = Vec::with_capacity(objects.len());
    for object in objects {
        let cells = def.ops.cells(&object, now)?;
        let mut row = json!({ "cells": cells });
        match include {
            IncludeObject::None => {}
            IncludeObject::Metadata => {
                row["object"] = json!({
                    "kind": "PartialObjectMetadata",
                    "apiVersion": format!("meta.k8s.io/{version}"),
                    "metadata": object.get("metadata").cloned().unwrap_or_else(|| json!({})),
                });
            }
            IncludeObject::Object => row["object"] = object,
        }
        rows.push(row);
    }
    let mut list_meta = json!({ "resourceVersion": meta.resource_version });
    if let Some(token) = meta.continue_token {
        list_meta["continue"] = token.into();
    }
    if let Some(remaining) = meta.remaining {
        list_meta["remainingItemCount"] = remaining.into();
    }
    Ok(json!({
        "kind": "Table",
        "apiVersion": format!("meta.k8s.io/{version}"),
        "metadata": list_meta,
        "columnDefinitions": def.ops.columns(),
        "rows": rows,
    }))
}
