//! `list`, `explain`, `status`: read what the agent holds.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use palisade_control::{ListRequest, Request, Response};
use palisade_model::{Action, Net, Timestamp};

use super::Context;
use crate::render;

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print a JSON array of decisions (every field, times in RFC 3339)
    #[arg(long)]
    json: bool,
    /// Only bans
    #[arg(long, conflicts_with = "allows")]
    bans: bool,
    /// Only allows
    #[arg(long)]
    allows: bool,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The address or network to explain
    #[arg(value_name = "ADDR", value_parser = super::decide::parse_net)]
    address: Net,
    /// Print the explanation as JSON
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print the status as JSON
    #[arg(long)]
    json: bool,
    /// Also read every enforcer's state back from the kernel and compare
    /// (a full dump: takes a while with very many bans)
    #[arg(long)]
    kernel: bool,
}

pub fn list(ctx: &Context, args: ListArgs) -> Result<ExitCode> {
    let action = match (args.bans, args.allows) {
        (true, _) => Some(Action::Ban),
        (_, true) => Some(Action::Allow),
        _ => None,
    };
    let mut client = ctx.connect()?;
    let now = Timestamp::now();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut table = render::Table::new();
    let mut first = true;
    let mut write_err = None;
    if args.json {
        writeln!(out, "[")?;
    }
    let fin = client.stream(&Request::List(ListRequest { action }), |item| {
        if let Response::Item { decision } = item {
            if args.json {
                let sep = if first { "" } else { ",\n" };
                first = false;
                let r = serde_json::to_string(&decision)
                    .map_err(std::io::Error::other)
                    .and_then(|s| write!(out, "{sep}  {s}"));
                if let Err(e) = r {
                    write_err.get_or_insert(e);
                }
            } else {
                table.push(&decision, now);
            }
        }
    })?;
    if let Some(e) = write_err {
        return Err(e.into());
    }
    if args.json {
        writeln!(out, "{}]", if first { "" } else { "\n" })?;
        out.flush()?;
        return Ok(ExitCode::SUCCESS);
    }
    drop(out);
    let count = match fin {
        Response::End { count } => count,
        _ => 0,
    };
    if count == 0 {
        println!("no active bans or allows");
    } else {
        table.print();
    }
    Ok(ExitCode::SUCCESS)
}

pub fn explain(ctx: &Context, args: ExplainArgs) -> Result<ExitCode> {
    let response = ctx.connect()?.call(&Request::Explain {
        address: args.address,
    })?;
    let Response::Explanation(e) = response else {
        anyhow::bail!("unexpected answer from the agent: {response:?}");
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&e)?);
    } else {
        print!("{}", render::explanation(&e));
    }
    Ok(ExitCode::SUCCESS)
}

pub fn status(ctx: &Context, args: StatusArgs) -> Result<ExitCode> {
    let response = ctx.connect()?.call(&Request::Status {
        kernel: args.kernel,
    })?;
    let Response::Status(s) = response else {
        anyhow::bail!("unexpected answer from the agent: {response:?}");
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print!("{}", render::status(&s));
    }
    let healthy = s.enforcers.iter().all(|e| e.healthy);
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
