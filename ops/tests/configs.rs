//! Every example configuration shipped in `ops/examples/*.toml` parses and validates, as
//! `tally server --config` loads it; so does every node configuration `ops/deploy/
//! local-cluster.sh` writes (its template, filled in as the script does). A mistyped key in
//! a copy of one is refused with the key named.

use std::path::{Path, PathBuf};

use tally::config::{NodeConfig, Overrides};

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_config_parses_and_validates() {
    let files = examples();
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for expected in ["production.toml", "tally.toml"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} not in {names:?}"
        );
    }
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let parsed =
            NodeConfig::from_toml(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        parsed
            .validate()
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        // The way `tally server --config FILE` loads it, with no variable or flag set.
        let loaded = NodeConfig::load(Some(file), &Overrides::default(), &Overrides::default())
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert_eq!(loaded, parsed, "{}", file.display());
        loaded
            .spec()
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    }
}

#[test]
fn the_production_example_says_what_a_production_node_needs() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/production.toml");
    let config = NodeConfig::load(Some(&path), &Overrides::default(), &Overrides::default())
        .expect("production.toml");
    assert_eq!(config.epoch_store.etcd.len(), 3, "a three-member etcd");
    assert!(config.epoch_store.file.is_none());
    assert!(
        config.advertise.is_some(),
        "a wildcard listen needs advertise"
    );
    assert!(!config.location.is_empty(), "a failure domain");
    assert!(config.roles().storage && config.roles().sequencer);
}

#[test]
fn a_mistyped_key_is_refused_by_name() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/production.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let typo = text.replace("lease_ttl =", "lease_tll =");
    assert_ne!(typo, text);
    let err = NodeConfig::from_toml(&typo).expect_err("a misspelt key must be refused");
    assert!(err.to_string().contains("lease_tll"), "{err}");
    // A value out of range is refused naming its key.
    let zero = text.replace("max_in_flight_stores = 4096", "max_in_flight_stores = 0");
    assert_ne!(zero, text);
    let err = NodeConfig::from_toml(&zero)
        .and_then(|c| c.validate())
        .expect_err("zero in-flight stores must be refused");
    assert!(
        err.to_string().contains("storage.max_in_flight_stores"),
        "{err}"
    );
}

#[test]
fn the_local_cluster_script_writes_valid_node_configs() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/local-cluster.sh");
    let text = std::fs::read_to_string(&script).unwrap();
    // The script's template lies between these two lines; fill in its variables.
    let marker = "cat >\"$config\" <<EOF\n";
    let start = text.find(marker).expect("the config template") + marker.len();
    let end = start + text[start..].find("\nEOF\n").expect("the template's end");
    let filled = text[start..end]
        .replace("$CLUSTER", "local")
        .replace("$id", "2")
        .replace("$port", "24021")
        .replace("$admin_port", "24031")
        .replace("$DIR", "/tmp/tally-local")
        .replace(
            "$ETCD_ENDPOINTS_TOML",
            "\"http://127.0.0.1:24000\", \"http://127.0.0.1:24001\"",
        );
    assert!(!filled.contains('$'), "unfilled variable in:\n{filled}");
    let config = NodeConfig::from_toml(&filled).unwrap_or_else(|e| panic!("{e}:\n{filled}"));
    config
        .validate()
        .unwrap_or_else(|e| panic!("{e}:\n{filled}"));
    assert_eq!(config.node_id, 2);
}
