//! `stash key list|add|remove|passwd`, like restic's.

use anyhow::{bail, Context, Result};
use repo_format::format::repofile::KeyFile;
use repo_format::{FileType, Id, Repository};

use crate::cli::{GlobalArgs, KeyCommand};
use crate::repo;

pub fn run(g: &GlobalArgs, cmd: &KeyCommand) -> Result<u8> {
    let r = repo::open(g)?;
    match cmd {
        KeyCommand::List { json } => list(&r, *json),
        KeyCommand::Add { new_password_file } => {
            let pw = repo::password_from_file(new_password_file)?;
            let name = r.add_key(&pw, repo::kdf_params()?)?;
            println!("saved new key as {}", short(&name));
            Ok(0)
        }
        KeyCommand::Remove { id } => {
            let id = r.find_id(FileType::Key, id)?.to_hex();
            if id == r.key_name() {
                bail!(
                    "refusing to remove key {}: it is the key in use (use `stash key passwd` to change the password)",
                    short(&id)
                );
            }
            r.backend()
                .remove(FileType::Key, &id)
                .with_context(|| format!("removing key {}", short(&id)))?;
            println!("removed key {}", short(&id));
            Ok(0)
        }
        KeyCommand::Passwd { new_password_file } => {
            let pw = repo::password_from_file(new_password_file)?;
            let name = r.add_key(&pw, repo::kdf_params()?)?;
            r.backend()
                .remove(FileType::Key, r.key_name())
                .with_context(|| {
                    format!(
                        "new key {} saved, but removing the old key {} failed",
                        short(&name),
                        short(r.key_name())
                    )
                })?;
            println!("saved new password as key {}", short(&name));
            Ok(0)
        }
    }
}

fn short(name: &str) -> String {
    name.chars().take(8).collect()
}

fn list(r: &Repository, json: bool) -> Result<u8> {
    let mut rows = Vec::new();
    for f in r.backend().list(FileType::Key)? {
        if Id::from_hex(&f.name).is_none() {
            continue;
        }
        let data = r.backend().read(FileType::Key, &f.name)?;
        let k = KeyFile::from_json(&data, &f.name)?;
        rows.push((f.name == r.key_name(), f.name, k));
    }
    rows.sort_by(|a, b| a.2.created.cmp(&b.2.created).then(a.1.cmp(&b.1)));
    let created = |k: &KeyFile| {
        k.created
            .with_timezone(&chrono::Local)
            .format("%Y-%m-%d %H:%M:%S")
            .to_string()
    };
    if json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|(current, name, k)| {
                serde_json::json!({
                    "current": current,
                    "id": short(name),
                    "userName": k.username,
                    "hostName": k.hostname,
                    "created": created(k),
                })
            })
            .collect();
        println!("{}", serde_json::to_string(&v)?);
        return Ok(0);
    }
    let header = format!(
        " {:<10}  {:<10}  {:<10}  {}",
        "ID", "User", "Host", "Created"
    );
    println!("{header}");
    println!("{}", "-".repeat(header.len().max(40)));
    for (current, name, k) in &rows {
        let mark = if *current { "*" } else { " " };
        println!(
            "{mark}{:<10}  {:<10}  {:<10}  {}",
            short(name),
            k.username,
            k.hostname,
            created(k)
        );
    }
    Ok(0)
}
