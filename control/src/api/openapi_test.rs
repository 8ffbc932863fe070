//! docs/openapi.yaml describes every route of the router, and no route the
//! router lacks.

use std::collections::BTreeSet;

use serde_norway::Value;

use super::routes;

const OPENAPI: &str = include_str!("../../../docs/openapi.yaml");

#[test]
fn openapi_describes_every_route() {
    let doc: Value = serde_norway::from_str(OPENAPI).expect("docs/openapi.yaml is YAML");
    let paths = doc.get("paths").and_then(Value::as_mapping).expect("a paths: map");
    let mut documented = BTreeSet::new();
    for (path, item) in paths {
        let path = path.as_str().expect("path keys are strings");
        for (method, _) in item.as_mapping().expect("a path item is a map") {
            let method = method.as_str().expect("method keys are strings");
            if ["get", "post", "put", "patch", "delete"].contains(&method) {
                documented.insert((method.to_owned(), path.to_owned()));
            }
        }
    }
    let served: BTreeSet<(String, String)> = routes()
        .iter()
        .map(|r| (r.method.to_owned(), r.path.to_owned()))
        .collect();
    let missing: Vec<_> = served.difference(&documented).collect();
    assert!(missing.is_empty(), "routes missing from docs/openapi.yaml: {missing:?}");
    let extra: Vec<_> = documented.difference(&served).collect();
    assert!(
        extra.is_empty(),
        "docs/openapi.yaml describes routes the router lacks: {extra:?}"
    );
}
