//! Checks `docker-compose.yml` at the repository root without running it (there is no
//! Docker engine on the test machines): the file parses as YAML; it defines the services
//! `rabbitmq`, `parent`, `child-1` and `child-2`; `rabbitmq` uses an image
//! `rabbitmq:3-management…`; the parent and each child keep their state in a named
//! volume of their own mounted at `/data`, declared under the top-level `volumes`; the
//! parent's command runs `serve` and the children's commands run `run`.

use std::path::PathBuf;

use yaml_rust2::{Yaml, YamlLoader};

const AGENTS: [&str; 3] = ["parent", "child-1", "child-2"];

fn compose_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docker-compose.yml")
}

/// The single YAML document of docker-compose.yml.
fn compose() -> Yaml {
    let path = compose_path();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut docs = YamlLoader::load_from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()));
    assert_eq!(
        docs.len(),
        1,
        "{} must hold exactly one YAML document",
        path.display()
    );
    let doc = docs.remove(0);
    assert!(
        doc.as_hash().is_some(),
        "docker-compose.yml: the top level must be a mapping"
    );
    doc
}

/// The mapping of service `name`, failing the test when it is missing.
fn service<'a>(doc: &'a Yaml, name: &str) -> &'a Yaml {
    let services = &doc["services"];
    assert!(
        services.as_hash().is_some(),
        "docker-compose.yml: no `services` mapping"
    );
    let svc = &services[name];
    assert!(
        svc.as_hash().is_some(),
        "docker-compose.yml: service `{name}` is missing or not a mapping"
    );
    svc
}

/// The words of a service's `command`, given as a string or as a list.
fn command_words(svc: &Yaml, name: &str) -> Vec<String> {
    match &svc["command"] {
        Yaml::String(s) => s.split_whitespace().map(str::to_owned).collect(),
        Yaml::Array(items) => items
            .iter()
            .map(|item| match item {
                Yaml::String(s) => s.clone(),
                Yaml::Integer(i) => i.to_string(),
                other => panic!("service `{name}`: command item {other:?} is not a string"),
            })
            .collect(),
        Yaml::BadValue => panic!("service `{name}` has no command"),
        other => panic!("service `{name}`: command {other:?} is neither a string nor a list"),
    }
}

/// (source, target) of each entry of a service's `volumes`, short or long syntax.
fn mounts(svc: &Yaml, name: &str) -> Vec<(String, String)> {
    let Some(entries) = svc["volumes"].as_vec() else {
        panic!("service `{name}` has no `volumes` list");
    };
    entries
        .iter()
        .map(|entry| match entry {
            // SOURCE:TARGET[:MODE]
            Yaml::String(s) => {
                let mut parts = s.splitn(3, ':');
                let source = parts.next().unwrap_or_default().to_owned();
                let target = parts.next().unwrap_or_default().to_owned();
                (source, target)
            }
            Yaml::Hash(_) => (
                entry["source"].as_str().unwrap_or_default().to_owned(),
                entry["target"].as_str().unwrap_or_default().to_owned(),
            ),
            other => {
                panic!("service `{name}`: volume entry {other:?} is neither a string nor a mapping")
            }
        })
        .collect()
}

/// The named volume a service mounts at /data.
fn data_volume(svc: &Yaml, name: &str) -> String {
    let mounts = mounts(svc, name);
    let Some((source, _)) = mounts
        .iter()
        .find(|(_, target)| target.trim_end_matches('/') == "/data")
    else {
        panic!("service `{name}` mounts nothing at /data (mounts: {mounts:?})");
    };
    assert!(
        !source.is_empty() && !source.starts_with(['/', '.', '~', '$']) && !source.contains('/'),
        "service `{name}`: /data comes from `{source}`, not from a named volume"
    );
    source.clone()
}

#[test]
fn defines_the_broker_the_parent_and_two_children() {
    let doc = compose();
    for name in ["rabbitmq"].into_iter().chain(AGENTS) {
        service(&doc, name);
    }
}

#[test]
fn broker_is_the_official_rabbitmq_management_image() {
    let doc = compose();
    let image = service(&doc, "rabbitmq")["image"]
        .as_str()
        .expect("service `rabbitmq` has no image");
    assert!(
        image.starts_with("rabbitmq:3-management"),
        "service `rabbitmq`: image `{image}` is not rabbitmq:3-management"
    );
}

#[test]
fn agents_keep_their_state_in_declared_named_volumes() {
    let doc = compose();
    let declared = doc["volumes"]
        .as_hash()
        .expect("docker-compose.yml: no top-level `volumes` mapping");
    let mut seen: Vec<(String, &str)> = Vec::new();
    for name in AGENTS {
        let volume = data_volume(service(&doc, name), name);
        assert!(
            declared.contains_key(&Yaml::String(volume.clone())),
            "service `{name}` mounts volume `{volume}` at /data, but `{volume}` is not declared under top-level `volumes`"
        );
        // Each agent's identity lives in its data dir: sharing one would clone it.
        if let Some((_, other)) = seen.iter().find(|(v, _)| *v == volume) {
            panic!("services `{other}` and `{name}` share the volume `{volume}`");
        }
        seen.push((volume, name));
    }
}

#[test]
fn parent_serves_and_children_run() {
    let doc = compose();
    let parent = command_words(service(&doc, "parent"), "parent");
    assert!(
        parent.iter().any(|w| w == "serve"),
        "service `parent`: command {parent:?} does not run `serve`"
    );
    for name in ["child-1", "child-2"] {
        let words = command_words(service(&doc, name), name);
        assert!(
            words.iter().any(|w| w == "run"),
            "service `{name}`: command {words:?} does not run `run`"
        );
    }
}
