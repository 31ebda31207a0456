//! Checks `docker-compose.yml` at the repository root without running it (there is no
//! Docker engine on the test machines): the file parses as YAML; it defines the services
//! `rabbitmq`, `parent`, `child-1` and `child-2`; `rabbitmq` uses an image
//! `rabbitmq:3-management…`; the parent and each child keep their state in a named
//! volume of their own mounted at `/data`, declared under the top-level `volumes`; the
//! parent's command runs `serve` and the children's commands run `run`.
//!
//! And the file cannot drift from the programs: each agent's command line and
//! `FLEETLS_*` variables are given to the real program, which must parse them
//! (it then stops at reading a config file that is not there, before doing
//! anything); each variable must be one that the command's `--help` says it
//! reads; and the values must pass the program's own checks of its settings
//! (`ServeConfig::from_raw`, `RunConfig::from_raw`, through clap's parser of
//! the same flags).

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Command;

use clap::{Args, FromArgMatches};
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

/// A service's `environment`, given as a mapping or as a list of `KEY=VALUE`.
fn environment(svc: &Yaml, name: &str) -> Vec<(String, String)> {
    let scalar = |value: &Yaml| match value {
        Yaml::String(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        Yaml::Boolean(b) => b.to_string(),
        other => panic!("service `{name}`: environment value {other:?} is not a scalar"),
    };
    match &svc["environment"] {
        Yaml::BadValue => Vec::new(),
        Yaml::Hash(map) => map
            .iter()
            .map(|(key, value)| (scalar(key), scalar(value)))
            .collect(),
        Yaml::Array(items) => items
            .iter()
            .map(|item| {
                let item = scalar(item);
                let (key, value) = item.split_once('=').unwrap_or((&item, ""));
                (key.to_owned(), value.to_owned())
            })
            .collect(),
        other => panic!("service `{name}`: environment {other:?} is neither a mapping nor a list"),
    }
}

/// Runs a program of this repository with `args` and exactly the variables
/// `env`: (exit code, stdout, stderr).
fn run(program: &str, args: &[String], env: &[(String, String)]) -> (i32, String, String) {
    let mut command = Command::new(fleetls_tests::program(program));
    command.args(args).env_clear().envs(env.iter().cloned());
    fleetls_tests::outcome(&mut command)
}

/// The variables a command says it reads: its `--help` shows `[env: NAME=]`.
fn variables_read(program: &str, subcommand: &str) -> BTreeSet<String> {
    let (code, help, err) = run(program, &[subcommand.into(), "--help".into()], &[]);
    assert_eq!(code, 0, "{program} {subcommand} --help: {err}");
    help.split("[env: ")
        .skip(1)
        .filter_map(|rest| rest.split_once('=').map(|(name, _)| name.to_owned()))
        .collect()
}

/// Parses `args` of `subcommand` and the `FLEETLS_*` variables of `env` with
/// clap's parser of `T` (the flags of the real command), each variable given
/// as the flag that reads it unless the command line gives that flag, as
/// the program does; the process's own environment is not read.
fn parse<T: Args + FromArgMatches>(
    subcommand: &str,
    args: &[String],
    env: &[(String, String)],
) -> T {
    let command = T::augment_args(clap::Command::new("compose"));
    let mut argv: Vec<String> = std::iter::once(subcommand.to_owned())
        .chain(args.iter().cloned())
        .collect();
    for (key, value) in env.iter().filter(|(key, _)| key.starts_with("FLEETLS_")) {
        let arg = command
            .get_arguments()
            .find(|a| a.get_env() == Some(OsStr::new(key)))
            .unwrap_or_else(|| panic!("no flag of `{subcommand}` reads {key}"));
        let flag = format!("--{}", arg.get_long().expect("every flag has a long name"));
        if !args
            .iter()
            .any(|a| *a == flag || a.starts_with(&format!("{flag}=")))
        {
            argv.push(flag);
            argv.push(value.clone());
        }
    }
    let command = command.mut_args(|arg| arg.env(None));
    let matches = command
        .try_get_matches_from(&argv)
        .unwrap_or_else(|e| panic!("`{}` does not parse: {e}", argv.join(" ")));
    T::from_arg_matches(&matches).unwrap_or_else(|e| panic!("`{}`: {e}", argv.join(" ")))
}

#[test]
fn the_programs_accept_every_command_line_and_variable() {
    let doc = compose();
    let scratch = tempfile::tempdir().unwrap();
    for name in AGENTS {
        let svc = service(&doc, name);
        let words = command_words(svc, name);
        let env = environment(svc, name);
        let [program, subcommand, args @ ..] = &words[..] else {
            panic!("service `{name}`: command {words:?} names no program and command");
        };
        assert!(
            ["fleetls-parent", "fleetls-child"].contains(&program.as_str()),
            "service `{name}` runs {program}, not fleetls-parent or fleetls-child"
        );

        // Every FLEETLS_* variable is one the command reads.
        let read = variables_read(program, subcommand);
        for (key, _) in env.iter().filter(|(key, _)| key.starts_with("FLEETLS_")) {
            assert!(
                read.contains(key),
                "service `{name}`: `{program} {subcommand}` does not read {key} (it reads {read:?})"
            );
        }

        // The real program takes the command line and the variables: it
        // gets as far as its config file (absent here) and stops there.
        let absent = scratch.path().join(format!("{name}.toml"));
        let mut with_config = env.clone();
        with_config.push(("FLEETLS_CONFIG".into(), absent.display().to_string()));
        let (code, out, err) = run(program, &words[1..], &with_config);
        assert!(
            code == 2 && err.starts_with(&format!("error: config file {}:", absent.display())),
            "service `{name}`: `{}` with {env:?} is refused before its config file (exit {code}):\n{out}{err}",
            words.join(" ")
        );

        // And the values pass the program's own checks.
        match (program.as_str(), subcommand.as_str()) {
            ("fleetls-parent", "serve") => {
                let raw = parse::<fleetls_parent::config::RawServe>(subcommand, args, &env);
                fleetls_parent::config::ServeConfig::from_raw(raw)
                    .unwrap_or_else(|e| panic!("service `{name}`: {e}"));
            }
            ("fleetls-child", "run") => {
                let raw = parse::<fleetls_child::config::RawRun>(subcommand, args, &env);
                fleetls_child::config::RunConfig::from_raw(raw)
                    .unwrap_or_else(|e| panic!("service `{name}`: {e}"));
            }
            (program, subcommand) => {
                panic!("service `{name}` runs `{program} {subcommand}`: this test does not know its settings")
            }
        }
    }
}

#[test]
fn the_image_is_built_from_every_crate_of_the_workspace() {
    let manifest = std::fs::read_to_string(fleetls_tests::repo().join("Cargo.toml")).unwrap();
    let members: toml::Table = toml::from_str(&manifest).unwrap();
    let members = members["workspace"]["members"].as_array().unwrap();
    let dockerfile = std::fs::read_to_string(fleetls_tests::repo().join("Dockerfile")).unwrap();
    for member in members {
        let member = member.as_str().unwrap();
        let line = format!("COPY {member} {member}");
        assert!(
            dockerfile.lines().any(|l| l.trim() == line),
            "the Dockerfile does not copy the workspace member {member}: add `{line}`"
        );
    }
}
