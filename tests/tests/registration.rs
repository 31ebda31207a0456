//! Children as processes register with a parent as a process, against the
//! real broker: `status --json` shows what each reported, and the admin API
//! refuses a request without the token.

use std::time::Duration;

use fleetls_tests::{start_child, wait_for, Parent, Vhost};

#[test]
fn three_children_register_and_show_what_they_reported() {
    let vhost = Vhost::new();
    let dir = tempfile::tempdir().unwrap();
    let parent = Parent::start(&vhost, dir.path(), &["--offline-after", "5"]);
    let _till = start_child(
        &vhost,
        dir.path(),
        "till-1",
        &[
            "--kind",
            "child",
            "--location",
            "shop-1",
            "--hostnames",
            "till-1.shop-1.example",
            "--ips",
            "10.1.0.11",
        ],
    );
    let _local = start_child(
        &vhost,
        dir.path(),
        "lp-1",
        &["--kind", "local-parent", "--location", "shop-1"],
    );
    let _old = start_child(
        &vhost,
        dir.path(),
        "bo-old",
        &["--kind", "child", "--report-version", "0.9.2"],
    );

    let status = wait_for("three agents online", Duration::from_secs(30), || {
        let status = parent.status_json().ok()?;
        let online = status["agents"]
            .as_array()?
            .iter()
            .filter(|a| a["online"] == true)
            .count();
        (online == 3).then_some(status)
    });
    let agents = status["agents"].as_array().unwrap();
    let find = |name: &str| agents.iter().find(|a| a["name"] == name).unwrap().clone();
    let till = find("till-1");
    assert_eq!(till["kind"], "child");
    assert_eq!(till["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(till["location"], "shop-1");
    assert_eq!(till["hostnames"][0], "till-1.shop-1.example");
    assert_eq!(till["ips"][0], "10.1.0.11");
    assert_eq!(till["has_certificate"], false);
    assert_eq!(find("lp-1")["kind"], "local-parent");
    let old = find("bo-old");
    assert_eq!(old["version"], "0.9.2");
    assert_eq!(old["ssl_capable"], false);
    assert_eq!(status["network"]["agents"], 3);
    assert_eq!(status["summary"]["version_not_supporting_ssl"], 1);
    // A local parent waits for an operator; ordinary children are accepted.
    assert_eq!(find("lp-1")["admission"], "pending");
    assert_eq!(till["admission"], "accepted");
    assert_eq!(status["network"]["pending"], 1);
    assert_eq!(status["network"]["eligible"], 1);
    let (code, out, err) = parent.cli(&["agents", "accept", "lp-1"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "accept: lp-1");
    let status = parent.status_json().unwrap();
    assert_eq!(status["network"]["pending"], 0);
    assert_eq!(status["network"]["eligible"], 2);

    // The table names every agent too.
    let (code, table, _) = parent.cli(&["status"]);
    assert_eq!(code, 0);
    for name in ["till-1", "lp-1", "bo-old"] {
        assert!(table.contains(name), "{table}");
    }
}

#[test]
fn the_admin_api_refuses_a_request_without_the_token() {
    let vhost = Vhost::new();
    let dir = tempfile::tempdir().unwrap();
    let parent = Parent::start(&vhost, dir.path(), &[]);
    let client = fleetls_tests::http();
    let url = format!("http://{}/api/status", parent.admin);
    let none = client.get(&url).send().unwrap();
    assert_eq!(none.status().as_u16(), 401);
    let body: serde_json::Value = none.json().unwrap();
    assert!(body["error"].as_str().unwrap().contains("admin.token"));
    let wrong = client
        .get(&url)
        .bearer_auth("not-the-token")
        .send()
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    let token = std::fs::read_to_string(parent.layout().token()).unwrap();
    let right = client.get(&url).bearer_auth(token.trim()).send().unwrap();
    assert_eq!(right.status().as_u16(), 200);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(parent.layout().token())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}
