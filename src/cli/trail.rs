//! `prism trail get | put`: what the lake knows of the trail its archive comes from: its name
//! (data Insights name it in `insightSource`) and which event categories it logs (Insights
//! types are refused on categories it does not log, as AWS refuses them).

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::json;

#[derive(Subcommand)]
pub enum TrailCommand {
    /// Show the trail settings.
    Get {
        #[arg(long)]
        lake: String,
    },
    /// Change the trail settings; what is not given stays as it is.
    #[command(after_help = "\
Examples:
  prism trail put --lake ./lake --name org-trail
  prism trail put --lake ./lake --data-events on         # the trail logs data events
  prism trail put --lake ./lake --management-events off  # a data-events-only trail

--data-events auto (the default) decides by the lake itself: on once it holds data events.
Insights on a category the trail does not log are refused (`prism selectors put`), and
Insights already enabled on it are not changed: turn them off there.")]
    Put {
        #[arg(long)]
        lake: String,
        /// The trail's name (as in CloudTrail: 3 to 128 letters, digits, '.', '_', '-').
        #[arg(long)]
        name: Option<String>,
        /// Whether the trail logs management events.
        #[arg(long, value_name = "on|off")]
        management_events: Option<OnOff>,
        /// Whether the trail logs data events: on, off, or auto (by the lake's events).
        #[arg(long, value_name = "on|off|auto")]
        data_events: Option<Logged>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Logged {
    On,
    Off,
    /// As the lake's events show.
    Auto,
}

pub async fn run(cmd: TrailCommand) -> anyhow::Result<ExitCode> {
    let mut lake = match &cmd {
        TrailCommand::Get { lake } | TrailCommand::Put { lake, .. } => prism::Lake::open(lake).await?,
    };
    if let TrailCommand::Put { name, management_events, data_events, .. } = cmd {
        let mut config = lake.config().clone();
        if let Some(name) = name {
            prism::lake::check_trail_name(&name).map_err(anyhow::Error::msg)?;
            config.trail_name = Some(name);
        }
        if let Some(m) = management_events {
            config.management_events = matches!(m, OnOff::On);
        }
        if let Some(d) = data_events {
            config.data_events = match d {
                Logged::On => Some(true),
                Logged::Off => Some(false),
                Logged::Auto => None,
            };
        }
        lake.save_config(config).await?;
    }
    let config = lake.config();
    let data = match config.data_events {
        Some(d) => json!(if d { "on" } else { "off" }),
        None => json!(format!(
            "auto ({})",
            if prism::insights::logs_data_events(&lake).await? { "on: the lake holds data events" } else { "off: the lake holds no data events" }
        )),
    };
    let shown = json!({
        "TrailName": config.trail(),
        "ManagementEvents": if config.management_events { "on" } else { "off" },
        "DataEvents": data,
    });
    println!("{}", serde_json::to_string_pretty(&shown)?);
    Ok(ExitCode::SUCCESS)
}
