//! The execs of one controller session: each `AgentExecStart` runs in a task of its own, its
//! input arrives in `AgentExecInput` messages, and its output and exit go back on the session
//! as `AgentExecOutput` and `AgentExecExit` with the same exec id.

use std::collections::HashMap;

use colex_proto as proto;
use colex_proto::agent_exec_input::Kind as InputKind;
use colex_proto::agent_message::Kind as AgentKind;
use tokio::sync::mpsc;

use super::exec::{ExecInput, ExecOutput, ExecRequest};
use super::exec_helper::ExecReport;
use super::Runtime;

/// Output chunks queued for one exec before the command's output is read again.
const OUTPUT_QUEUE_LEN: usize = 16;

/// The running execs of one session, by exec id. Dropping it (the session ended) kills their
/// commands.
#[derive(Debug, Default)]
pub struct ExecSessions {
    /// Input queues of the running commands, by exec id. They are unbounded, so a command that
    /// does not read its stdin cannot block the session loop and its heartbeats.
    // NOTE: the agent buffers whatever stdin the caller sends faster than the command reads it.
    inputs: HashMap<u64, mpsc::UnboundedSender<ExecInput>>,
}

impl ExecSessions {
    /// Starts `start` on `runtime` in a task that reports on `outbound`. Without a runtime the
    /// exec fails at once.
    pub fn start(&mut self, runtime: Option<Runtime>, start: proto::AgentExecStart, outbound: mpsc::Sender<proto::AgentMessage>) {
        self.inputs.retain(|_, sender| !sender.is_closed());
        let exec_id = start.exec_id;
        let (input_tx, input_rx) = mpsc::unbounded_channel();
        self.inputs.insert(exec_id, input_tx);
        tracing::info!(silo_id = %start.silo_id, exec_id, tty = start.tty, "exec requested");
        tokio::spawn(async move {
            let Some(runtime) = runtime else {
                let report = ExecReport::Failed {
                    message: "the agent's runtime is not ready yet".to_owned(),
                    code: None,
                };
                let _ = outbound.send(exit_message(exec_id, report)).await;
                return;
            };
            let silo_id = start.silo_id.clone();
            let request = ExecRequest {
                silo_id: start.silo_id,
                argv: start.argv,
                env: start.env,
                tty: start.tty,
                size: start.size.map(|size| (clamp_u16(size.rows), clamp_u16(size.cols))),
                term: start.term,
                stdin: start.stdin,
                raw_sockets: start.raw_sockets,
            };
            let (output_tx, mut output_rx) = mpsc::channel::<ExecOutput>(OUTPUT_QUEUE_LEN);
            let forward = {
                let outbound = outbound.clone();
                async move {
                    while let Some(chunk) = output_rx.recv().await {
                        let message = agent_message(AgentKind::ExecOutput(proto::AgentExecOutput {
                            exec_id,
                            data: chunk.data,
                            stderr: chunk.stderr,
                        }));
                        if outbound.send(message).await.is_err() {
                            return;
                        }
                    }
                }
            };
            let (report, ()) = tokio::join!(runtime.exec(request, input_rx, output_tx), forward);
            tracing::info!(%silo_id, exec_id, ?report, "exec finished");
            let _ = outbound.send(exit_message(exec_id, report)).await;
        });
    }

    /// Passes one input message to its exec. Input for an unknown or finished exec is dropped.
    pub fn input(&mut self, input: proto::AgentExecInput) {
        let Some(sender) = self.inputs.get(&input.exec_id) else {
            return;
        };
        let converted = match input.kind {
            Some(InputKind::Stdin(data)) => ExecInput::Stdin(data),
            Some(InputKind::StdinClose(_)) => ExecInput::CloseStdin,
            Some(InputKind::Resize(size)) => ExecInput::Resize {
                rows: clamp_u16(size.rows),
                cols: clamp_u16(size.cols),
            },
            None => return,
        };
        if sender.send(converted).is_err() {
            self.inputs.remove(&input.exec_id);
        }
    }

    /// Kills the command of exec `exec_id`; its exit is still reported.
    pub fn cancel(&mut self, exec_id: u64) {
        if self.inputs.remove(&exec_id).is_some() {
            tracing::info!(exec_id, "exec cancelled by the controller");
        }
    }

    /// Kills the commands of every exec, for a session that ended.
    pub fn cancel_all(&mut self) {
        self.inputs.clear();
    }
}

fn clamp_u16(value: u32) -> u16 {
    u16::try_from(value).unwrap_or(u16::MAX)
}

fn agent_message(kind: AgentKind) -> proto::AgentMessage {
    proto::AgentMessage { kind: Some(kind) }
}

fn exit_message(exec_id: u64, report: ExecReport) -> proto::AgentMessage {
    let exit = match report {
        ExecReport::Exited { code } => proto::ExecExit {
            code: Some(code),
            ..Default::default()
        },
        ExecReport::Signaled { signal } => proto::ExecExit {
            signal: Some(signal),
            ..Default::default()
        },
        ExecReport::Failed { message, code } => proto::ExecExit {
            code,
            signal: None,
            error: message,
        },
    };
    agent_message(AgentKind::ExecExit(proto::AgentExecExit {
        exec_id,
        exit: Some(exit),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn exec_without_runtime_fails() {
        let mut sessions = ExecSessions::default();
        let (outbound, mut messages) = mpsc::channel(4);
        let start = proto::AgentExecStart {
            exec_id: 9,
            silo_id: "00000001".to_owned(),
            argv: vec!["true".to_owned()],
            ..Default::default()
        };
        sessions.start(None, start, outbound);
        match messages.recv().await.and_then(|message| message.kind) {
            Some(AgentKind::ExecExit(exit)) => {
                assert_eq!(exit.exec_id, 9);
                let error = exit.exit.map(|exit| exit.error).unwrap_or_default();
                assert!(error.contains("not ready"), "{error}");
            }
            other => panic!("expected an exec exit, got {other:?}"),
        }
    }

    #[test]
    fn reports_map_to_exits() {
        let exited = exit_message(1, ExecReport::Exited { code: 7 });
        let signaled = exit_message(2, ExecReport::Signaled { signal: 9 });
        let exits: Vec<proto::ExecExit> = [exited, signaled]
            .into_iter()
            .filter_map(|message| match message.kind {
                Some(AgentKind::ExecExit(exit)) => exit.exit,
                _ => None,
            })
            .collect();
        assert_eq!(exits[0].code, Some(7));
        assert_eq!(exits[1].signal, Some(9));
        assert_eq!(exits[1].code, None);
    }
}
