//! Controllers as tasks of their own. Joined in one task (`tokio::join!`), every controller and the shared VMI
//! watch took turns on one thread: at 10,000 nodes the scheduler's placements held it, the watch's socket
//! filled (4 MB unread) and the VMI cache fell tens of seconds behind the store, so reconciles planned from old
//! versions and met conflicts (~90 a second). Tasks run on every core the runtime has, and each makes progress
//! whatever the others do.

use std::future::Future;
use tokio::task::JoinSet;

/// Tasks that end together: dropping the set (leadership lost) aborts them all.
#[derive(Default)]
pub struct Tasks(JoinSet<anyhow::Result<()>>);

impl Tasks {
    pub fn spawn(&mut self, task: impl Future<Output = anyhow::Result<()>> + Send + 'static) {
        self.0.spawn(task);
    }

    /// A task that ends only when its streams do.
    pub fn spawn_unit(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.0.spawn(async move {
            task.await;
            Ok(())
        });
    }

    /// Waits for every task; the first error ends them all (the caller restarts them), and a panic is resumed
    /// here, as it would have been in one task.
    pub async fn join(mut self) -> anyhow::Result<()> {
        while let Some(done) = self.0.join_next().await {
            match done {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tasks_run_apart_and_end_together() {
        // One task spinning on its thread must not stop another from finishing.
        let stop = Arc::new(AtomicBool::new(false));
        // Ends the spinner however the test ends (an abort cannot stop a loop without an await in it).
        struct Stop(Arc<AtomicBool>);
        impl Drop for Stop {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let _stop = Stop(stop.clone());
        let mut tasks = Tasks::default();
        let spin = stop.clone();
        tasks.spawn_unit(async move {
            while !spin.load(Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        });
        let (tx, rx) = tokio::sync::oneshot::channel();
        tasks.spawn_unit(async move {
            let _ = tx.send(());
        });
        tokio::time::timeout(std::time::Duration::from_secs(10), rx).await.expect("ran beside the spinner").unwrap();
        stop.store(true, Ordering::Relaxed);
        tasks.join().await.unwrap();

        // The first error ends the rest; dropping the set aborts what is left.
        let mut tasks = Tasks::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tasks.spawn_unit(async move {
            let _tx = tx;
            std::future::pending::<()>().await
        });
        tasks.spawn(async { anyhow::bail!("broke") });
        assert_eq!(tasks.join().await.unwrap_err().to_string(), "broke");
        assert!(rx.await.is_err(), "the pending task was aborted (its sender dropped)");
    }
}
