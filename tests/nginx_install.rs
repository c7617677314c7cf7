//! The nginx kit installed as nginx/README.md says into a copy of Debian's own nginx
//! configuration (the nginx.conf, conf.d/, snippets/, sites-enabled/ and modules-enabled/
//! the package ships, with its default site still on port 80): `nginx -t` accepts it
//! without a warning. This is the layout the kit's relative includes and its main-context
//! file are written for, and Debian 12's nginx 1.22 is the one the TLS server must work on.

mod support;

use std::fs;
use std::path::Path;
use std::process::Command;

use support::nginx::NGINX;
use support::write_certificates;
use support::{repo_path, require_tool};

const ETC: &str = "/etc/nginx";

/// Copy the files of `from` (one level, symlinks followed) into `to`, rewriting `edit`.
fn copy_dir(from: &Path, to: &Path, edit: &dyn Fn(String) -> String) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let text = fs::read_to_string(&path).unwrap();
            fs::write(to.join(path.file_name().unwrap()), edit(text)).unwrap();
        }
    }
}

#[test]
fn the_kit_installs_into_debians_stock_nginx_configuration() {
    require_tool(NGINX);
    require_tool(&format!("{ETC}/nginx.conf"));
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc");
    let e = etc.display().to_string();
    let d = dir.path().display().to_string();
    // Debian's absolute paths, moved into the temp dir.
    let relocate = |text: String| {
        text.replace("/etc/nginx/", &format!("{e}/"))
            .replace("/var/log/nginx/", &format!("{d}/"))
            .replace("/run/nginx.pid", &format!("{d}/nginx.pid"))
    };
    copy_dir(Path::new(ETC), &etc, &relocate);
    for sub in ["conf.d", "snippets", "sites-enabled", "modules-enabled"] {
        copy_dir(&Path::new(ETC).join(sub), &etc.join(sub), &relocate);
    }

    // The steps of nginx/README.md, with /etc/nginx relocated.
    let kit = |file: &str| fs::read_to_string(repo_path(&format!("nginx/{file}"))).unwrap();
    fs::write(etc.join("herald-main.conf"), kit("herald-main.conf")).unwrap();
    let main = fs::read_to_string(etc.join("nginx.conf")).unwrap();
    let include = relocate("include /etc/nginx/herald-main.conf;\n".to_string());
    fs::write(etc.join("nginx.conf"), format!("{include}{main}")).unwrap();
    let (_, cert, key) = write_certificates(dir.path(), "nginx");
    let tls = kit("herald-tls.conf")
        .replace("/etc/ssl/herald/fullchain.pem", &cert.display().to_string())
        .replace("/etc/ssl/herald/privkey.pem", &key.display().to_string());
    fs::write(etc.join("conf.d/herald-tls.conf"), tls).unwrap();
    for file in [
        "herald-upstream.conf",
        "herald.conf",
        "snippets/herald-locations.conf",
        "snippets/herald-proxy.conf",
    ] {
        let target = match file {
            "herald-upstream.conf" | "herald.conf" => format!("conf.d/{file}"),
            snippet => snippet.to_string(),
        };
        fs::write(etc.join(target), kit(file)).unwrap();
    }

    // -t parses and loads everything (modules, certificates) but binds nothing.
    let out = Command::new(NGINX)
        .arg("-t")
        .arg("-c")
        .arg(etc.join("nginx.conf"))
        .output()
        .expect("run nginx -t");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("[warn]") && !stderr.contains("[emerg]"),
        "nginx -t on Debian's configuration with the kit:\n{stderr}"
    );
    assert!(stderr.contains("test is successful"), "{stderr}");
}
