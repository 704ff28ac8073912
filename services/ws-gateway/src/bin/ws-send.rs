//! `ws-send URL [MESSAGE]...`: a minimal WebSocket client to try the gateway. Sends each
//! message (or each line of stdin when none is given), prints every reply, and exits once each
//! message has its reply (0 when none was an error frame).

use std::{io::BufRead as _, process::ExitCode, time::Duration};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(url) = args.next().filter(|a| a != "--help" && a != "-h") else {
        eprintln!(
            "usage: ws-send ws://HOST:PORT/ws?token=JWT [MESSAGE]...   (no MESSAGE: one per stdin line)"
        );
        return ExitCode::from(64);
    };
    let mut messages: Vec<String> = args.collect();
    if messages.is_empty() {
        messages = std::io::stdin()
            .lock()
            .lines()
            .map_while(Result::ok)
            .filter(|l| !l.trim().is_empty())
            .collect();
    }
    let (mut socket, _) = match tokio_tungstenite::connect_async(url.as_str()).await {
        Ok(connected) => connected,
        Err(err) => {
            eprintln!("error: cannot open {url}: {err}");
            return ExitCode::FAILURE;
        }
    };
    for message in &messages {
        if let Err(err) = socket.send(Message::text(message.as_str())).await {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    }
    let (mut replies, mut errors) = (0, 0);
    while replies < messages.len() {
        match tokio::time::timeout(Duration::from_secs(10), socket.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                println!("{text}");
                replies += 1;
                if text.as_str().starts_with("{\"error\"") {
                    errors += 1;
                }
            }
            Ok(Some(Ok(Message::Close(frame)))) => {
                eprintln!("closed: {frame:?}");
                return ExitCode::FAILURE;
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(err))) => {
                eprintln!("error: {err}");
                return ExitCode::FAILURE;
            }
            Ok(None) | Err(_) => {
                eprintln!("error: no reply within 10 s");
                return ExitCode::FAILURE;
            }
        }
    }
    let _ = socket.close(None).await;
    if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
