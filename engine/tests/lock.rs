//! The directory lock: a second open of the same engine directory is refused with an error naming
//! the directory — from this process and from another one — and the lock dies with its holder.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use keel_engine::{Engine, EngineError, KvStateMachine};
use keel_storage::DirAccess;
use keel_storage::{FsDirectory, MemFs};

/// Set in the child process: the directory it opens and holds.
const CHILD_ENV: &str = "KEEL_ENGINE_LOCK_CHILD_DIR";

async fn open_fs(path: &std::path::Path) -> Result<(), EngineError> {
    let root = FsDirectory::open_with(path, DirAccess::Create)
        .await
        .unwrap();
    Engine::open(root, common::small_config(), KvStateMachine::new())
        .await
        .map(|_| ())
}

fn assert_locked(error: &EngineError, path: &std::path::Path) {
    match error {
        EngineError::Locked { dir, .. } => {
            assert!(
                dir.contains(&*path.to_string_lossy()),
                "the error names the directory: {dir}"
            )
        }
        other => panic!("expected Locked, got {other}"),
    }
    assert!(error.to_string().contains(&*path.to_string_lossy()));
}

#[compio::test]
async fn second_open_in_process_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = FsDirectory::open_with(tmp.path(), DirAccess::Create)
        .await
        .unwrap();
    let (engine, _) = Engine::open(root.clone(), common::small_config(), KvStateMachine::new())
        .await
        .unwrap();
    let err = open_fs(tmp.path()).await.unwrap_err();
    assert_locked(&err, tmp.path());
    engine.close().await.unwrap();
    open_fs(tmp.path()).await.expect("free again after close");
}

#[compio::test]
async fn second_open_in_process_is_refused_on_memfs() {
    let fs = MemFs::new(1);
    let (engine, _) = Engine::open(fs.root(), common::small_config(), KvStateMachine::new())
        .await
        .unwrap();
    let err = Engine::open(fs.root(), common::small_config(), KvStateMachine::new())
        .await
        .err()
        .expect("refused");
    assert!(matches!(err, EngineError::Locked { .. }), "{err}");
    drop(engine);
    Engine::open(fs.root(), common::small_config(), KvStateMachine::new())
        .await
        .expect("free after drop");
}

/// Not a test of its own: the child half of `second_open_from_another_process_is_refused`.
/// Holds the engine open until its stdin closes.
#[test]
fn lock_child_helper() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let runtime = compio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let root = FsDirectory::open_with(&dir, DirAccess::Create)
            .await
            .unwrap();
        let _engine = Engine::open(root, common::small_config(), KvStateMachine::new())
            .await
            .unwrap();
        println!("KEEL-CHILD-LOCKED");
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
    });
}

#[test]
fn second_open_from_another_process_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "lock_child_helper",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, tmp.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        let line = lines
            .next()
            .expect("child exited before taking the lock")
            .unwrap();
        if line.contains("KEEL-CHILD-LOCKED") {
            break;
        }
    }
    let runtime = compio::runtime::Runtime::new().unwrap();
    let err = runtime.block_on(open_fs(tmp.path())).unwrap_err();
    assert_locked(&err, tmp.path());
    // The lock dies with the process: kill -9, then the directory opens.
    child.kill().unwrap();
    child.wait().unwrap();
    runtime
        .block_on(open_fs(tmp.path()))
        .expect("lock released when its holder died");
}
