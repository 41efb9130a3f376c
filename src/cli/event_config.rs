//! `prism event-config put | get`: which aggregated-event templates a lake computes (like
//! CloudTrail's PutEventConfiguration and GetEventConfiguration).

use std::process::ExitCode;

use clap::Subcommand;

use prism::aggregate;

#[derive(Subcommand)]
pub enum EventConfigCommand {
    /// Configure aggregated events (like PutEventConfiguration). An empty list turns them off.
    #[command(after_help = "\
Examples:
  prism event-config put --lake ./lake --aggregation-configurations \\
    '[{\"EventCategory\":\"Data\",\"Templates\":[\"API_ACTIVITY\",\"RESOURCE_ACCESS\",\"USER_ACTIONS\"]}]'
  prism event-config put --lake ./lake --aggregation-configurations '[]'     # off

At most one configuration; EventCategory is Data (only data events are aggregated); 1 to 50
Templates of API_ACTIVITY (per API), RESOURCE_ACCESS (per resource: an S3 bucket, a function, a
table) and USER_ACTIONS (per principal). Then `prism aggregate backfill` computes the 5-minute
summaries.")]
    Put {
        #[arg(long)]
        lake: String,
        /// JSON list of {"EventCategory":"Data","Templates":[…]}, or the whole
        /// {"AggregationConfigurations":[…]} request.
        #[arg(long, value_name = "JSON")]
        aggregation_configurations: String,
    },
    /// Show the configuration (like GetEventConfiguration).
    Get {
        #[arg(long)]
        lake: String,
    },
}

pub async fn run(cmd: EventConfigCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        EventConfigCommand::Put { lake, aggregation_configurations } => {
            let templates = aggregate::parse_event_config(&aggregation_configurations)?;
            let mut lake = prism::Lake::open(&lake).await?;
            aggregate::put_event_config(&mut lake, templates.clone()).await?;
            println!("{}", serde_json::to_string_pretty(&aggregate::event_config_response(lake.url(), &templates))?);
        }
        EventConfigCommand::Get { lake } => {
            let (url, config) = prism::Lake::read_config(&lake).await?;
            println!("{}", serde_json::to_string_pretty(&aggregate::event_config_response(&url, &config.aggregation_templates))?);
        }
    }
    Ok(ExitCode::SUCCESS)
}
