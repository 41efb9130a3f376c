//! `prism selectors put | get`: which Insights types a lake analyses (like CloudTrail's
//! PutInsightSelectors and GetInsightSelectors).

use std::process::ExitCode;

use clap::Subcommand;

use prism::insights;

#[derive(Subcommand)]
pub enum SelectorsCommand {
    /// Enable Insights types (like PutInsightSelectors). An empty list turns Insights off.
    #[command(after_help = "\
Examples:
  prism selectors put --lake ./lake --insight-selectors '[{\"InsightType\":\"ApiCallRateInsight\"},{\"InsightType\":\"ApiErrorRateInsight\"}]'
  prism selectors put --lake ./lake --insight-selectors '[]'        # Insights off

Valid types: ApiCallRateInsight (write management calls per minute, per API) and
ApiErrorRateInsight (management calls per minute with one error code, per API and code).
Both are off by default.")]
    Put {
        #[arg(long)]
        lake: String,
        /// JSON list of {"InsightType": …}, or the whole {"InsightSelectors":[…]} request.
        #[arg(long, value_name = "JSON")]
        insight_selectors: String,
    },
    /// Show the enabled types (like GetInsightSelectors).
    Get {
        #[arg(long)]
        lake: String,
    },
}

pub async fn run(cmd: SelectorsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SelectorsCommand::Put { lake, insight_selectors } => {
            let types = insights::parse_selectors(&insight_selectors)?;
            let mut lake = prism::Lake::open(&lake).await?;
            insights::put_selectors(&mut lake, types.clone()).await?;
            println!("{}", serde_json::to_string_pretty(&insights::selectors_response(lake.url(), &types))?);
        }
        SelectorsCommand::Get { lake } => {
            let (url, config) = prism::Lake::read_config(&lake).await?;
            let types = insights::get_selectors(&url, &config)?;
            println!("{}", serde_json::to_string_pretty(&insights::selectors_response(&url, &types))?);
        }
    }
    Ok(ExitCode::SUCCESS)
}
