//! The engine thread: owns the model and the [`EngineCore`], takes requests and cancellations
//! from the HTTP side, runs batched steps while there is work, and routes each step's events to
//! the request they belong to. A request whose client has gone (its receiver dropped) is
//! cancelled at once, freeing its KV memory. The model crate never sees tokio: this thread is
//! plain std, and talks to async handlers through channels.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use herd_engine::{EngineCore, EngineError, Event, LanguageModel, Request, RequestId, SchedulerConfig};
use tokio::sync::{mpsc::UnboundedReceiver, mpsc::UnboundedSender, oneshot};

use crate::error::ApiError;
use crate::metrics::Metrics;

enum Command {
    Add {
        request: Box<Request>,
        events: UnboundedSender<Event>,
        reply: oneshot::Sender<Result<RequestId, EngineError>>,
    },
    Cancel(RequestId),
}

/// The HTTP side's handle on the engine thread (cheap to clone).
#[derive(Clone)]
pub struct EngineHandle {
    commands: mpsc::Sender<Command>,
    /// False once the engine thread has ended (for `/health`).
    alive: Arc<AtomicBool>,
}

/// Clears the flag when the engine thread ends, however it ends.
struct AliveGuard(Arc<AtomicBool>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl EngineHandle {
    /// Starts the engine thread over `model`.
    pub fn spawn<M>(model: M, config: SchedulerConfig, metrics: Arc<Metrics>) -> Result<Self, EngineError>
    where
        M: LanguageModel + Send + 'static,
    {
        config.validate()?;
        let (commands, rx) = mpsc::channel();
        let alive = Arc::new(AtomicBool::new(true));
        let guard = AliveGuard(alive.clone());
        std::thread::Builder::new()
            .name("herd-engine".into())
            .spawn(move || {
                let _guard = guard;
                match EngineCore::new(model, config) {
                    Ok(mut core) => run(&mut core, &rx, &metrics),
                    Err(e) => tracing::error!("the engine did not start: {e}"),
                }
            })
            .map_err(|e| EngineError::Frontend(format!("starting the engine thread: {e}")))?;
        Ok(EngineHandle { commands, alive })
    }

    /// Queues a request; its events arrive on the returned receiver. Dropping the receiver
    /// cancels the request.
    pub async fn submit(&self, request: Request) -> Result<(RequestId, UnboundedReceiver<Event>), ApiError> {
        let (events, rx) = tokio::sync::mpsc::unbounded_channel();
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Add {
                request: Box::new(request),
                events,
                reply,
            })
            .map_err(|_| ApiError::unavailable("the engine has stopped"))?;
        let id = answer
            .await
            .map_err(|_| ApiError::unavailable("the engine has stopped"))??;
        Ok((id, rx))
    }

    /// Whether the engine thread is still running.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    /// Drops a request now (a stop string ended it, or its client left).
    pub fn cancel(&self, id: RequestId) {
        let _ = self.commands.send(Command::Cancel(id));
    }
}

fn run<M: LanguageModel>(core: &mut EngineCore<M>, rx: &mpsc::Receiver<Command>, metrics: &Metrics) {
    let mut senders: HashMap<RequestId, UnboundedSender<Event>> = HashMap::new();
    loop {
        if !core.has_work() {
            // Idle: sleep until a command comes (or every handle is gone: the server stopped).
            match rx.recv() {
                Ok(command) => apply(core, &mut senders, command),
                Err(_) => return,
            }
        }
        while let Ok(command) = rx.try_recv() {
            apply(core, &mut senders, command);
        }
        // Clients that left while waiting or between tokens.
        senders.retain(|&id, tx| {
            let open = !tx.is_closed();
            if !open {
                core.cancel(id);
            }
            open
        });
        let started = std::time::Instant::now();
        let events = match std::panic::catch_unwind(AssertUnwindSafe(|| core.step())) {
            Ok(events) => events,
            Err(_) => {
                // A bug, not a request's fault; but no state of this step can be trusted: fail
                // everything in flight and keep serving.
                tracing::error!("the engine panicked during a step; failing the requests in flight");
                for (id, tx) in senders.drain() {
                    core.cancel(id);
                    let _ = tx.send(Event::Failed {
                        id,
                        message: "internal error in the engine".into(),
                    });
                }
                Vec::new()
            }
        };
        let stats = core.stats();
        tracing::debug!(
            "step: {} events, {} running, {} waiting, {:.1} ms",
            events.len(),
            stats.running,
            stats.waiting,
            started.elapsed().as_secs_f64() * 1e3
        );
        metrics.engine(stats);
        for event in events {
            let id = event.request();
            let last = matches!(event, Event::Finished { .. } | Event::Failed { .. });
            if let Some(tx) = senders.get(&id) {
                if tx.send(event).is_err() {
                    core.cancel(id);
                    senders.remove(&id);
                    continue;
                }
            }
            if last {
                senders.remove(&id);
            }
        }
    }
}

fn apply<M: LanguageModel>(
    core: &mut EngineCore<M>,
    senders: &mut HashMap<RequestId, UnboundedSender<Event>>,
    command: Command,
) {
    match command {
        Command::Add {
            request,
            events,
            reply,
        } => {
            let added = core.add(*request);
            if let Ok(id) = &added {
                senders.insert(*id, events);
            }
            if let Err(Ok(id)) = reply.send(added) {
                // The handler is gone already.
                core.cancel(id);
                senders.remove(&id);
            }
        }
        Command::Cancel(id) => {
            core.cancel(id);
            senders.remove(&id);
        }
    }
}
