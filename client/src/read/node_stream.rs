//! One read stream to one node: open it with `StartRead`, forward every pushed message to the
//! reader's task, send `ReadWindow` whenever the window slides, and `StopRead` when the
//! reader closes it. Pushes and controls flow concurrently on the two halves of the QUIC
//! stream. The task ends after `ReadDone`, on any failure (reported once), or when closed.

use std::sync::Arc;

use tally_common::transport::TransportError;
use tally_common::wire::client::{ClientRequest, ClientResponse};
use tally_common::{LogId, Lsn};
use tokio::sync::{mpsc, watch};
use tracing::Instrument as _;

use crate::client::Shared;
use crate::reader::StreamId;

/// What a node stream tells the reader's task.
#[derive(Debug)]
pub(super) enum StreamEvent {
    /// A pushed message (records, a gap, `ReadDone`); never `Error`.
    Pushed {
        stream: StreamId,
        message: ClientResponse,
    },
    /// The stream failed (could not open, broke, or the node answered an error).
    Failed { stream: StreamId, error: String },
}

/// The reader's handle on a node stream: the window to send; dropping it closes the stream.
#[derive(Debug)]
pub(super) struct StreamHandle {
    pub(super) window: watch::Sender<Lsn>,
}

/// Starts the stream of `request` (a `StartRead` whose window ends at `window_until`) on
/// the client's task tracker.
pub(super) fn start(
    shared: &Arc<Shared>,
    log: LogId,
    stream: StreamId,
    request: ClientRequest,
    window_until: Lsn,
    events: mpsc::Sender<StreamEvent>,
) -> StreamHandle {
    let (window, window_rx) = watch::channel(window_until);
    let task_shared = shared.clone();
    let span = tracing::debug_span!("read_stream", %log, node = %stream.node);
    let task = async move {
        let ran = run(
            &task_shared,
            stream,
            request,
            window_until,
            window_rx,
            &events,
        )
        .await;
        if let Err(error) = ran {
            tracing::debug!(%error, "read stream failed");
            let _ = events.send(StreamEvent::Failed { stream, error }).await;
        }
    };
    shared.tracker.spawn(task.instrument(span));
    StreamHandle { window }
}

/// Runs the stream until it is done (`Ok`), closed by the reader (`Ok`), or fails.
async fn run(
    shared: &Arc<Shared>,
    stream: StreamId,
    request: ClientRequest,
    sent_window: Lsn,
    mut window: watch::Receiver<Lsn>,
    events: &mpsc::Sender<StreamEvent>,
) -> Result<(), String> {
    let Some(addr) = shared.cluster.address(stream.node).await else {
        shared.refresh_soon();
        return Err("address unknown to the cluster view".into());
    };
    let open = shared
        .connector
        .open(addr, &request, shared.config.request_timeout);
    let opened = tokio::select! {
        opened = open => opened,
        () = closed(&mut window) => return Ok(()),
    };
    let (mut control, mut pushes) = match opened {
        Ok(s) => s.split(),
        Err(e) => {
            if e.is_retryable() {
                shared.refresh_soon();
            }
            return Err(e.to_string());
        }
    };
    let controls = async {
        let mut sent = sent_window;
        loop {
            let until = *window.borrow_and_update();
            if until > sent {
                if control
                    .control(&ClientRequest::ReadWindow { until })
                    .await
                    .is_err()
                {
                    // The connection is gone; the push side reports why.
                    return std::future::pending::<()>().await;
                }
                sent = until;
            }
            if window.changed().await.is_err() {
                // Closed by the reader.
                let _ = control.control(&ClientRequest::StopRead).await;
                control.finish();
                return;
            }
        }
    };
    let receive = async {
        loop {
            match pushes.next().await {
                Ok(Some(ClientResponse::Error(e))) | Err(TransportError::Remote(e)) => {
                    return Err(format!("node answered {e}"));
                }
                Ok(Some(message)) => {
                    let done = matches!(message, ClientResponse::ReadDone);
                    if events
                        .send(StreamEvent::Pushed { stream, message })
                        .await
                        .is_err()
                    {
                        return Ok(()); // the reader is gone
                    }
                    if done {
                        return Ok(());
                    }
                }
                Ok(None) => return Err("the node ended the stream before ReadDone".into()),
                Err(e) => return Err(e.to_string()),
            }
        }
    };
    tokio::select! {
        () = controls => Ok(()),
        result = receive => result,
    }
}

/// Resolves once the reader dropped the window sender.
async fn closed(window: &mut watch::Receiver<Lsn>) {
    while window.changed().await.is_ok() {}
}
