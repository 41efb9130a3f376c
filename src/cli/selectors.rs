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

  prism selectors put --lake ./lake --insight-selectors \
    '[{\"InsightType\":\"ApiCallRateInsight\",\"EventCategories\":[\"Management\",\"Data\"]}]'

Valid types: ApiCallRateInsight (calls per minute, per API) and ApiErrorRateInsight (calls per
minute with one error code, per API and code). Both are off by default.

EventCategories: Management (the default when omitted) and Data. On management events call
rate counts writes; on data events (S3 objects, Lambda invokes, DynamoDB items, …) it counts
reads and writes. A selector's list replaces the type's categories: sending only Data turns
that type's management Insights off. Data Insights are refused on a lake whose trail logs no
data events (its settings' `data_events`, or else whether the lake holds any).")]
    Put {
        #[arg(long)]
        lake: String,
        /// JSON list of {"InsightType": …, "EventCategories": […]}, or the whole
        /// {"InsightSelectors":[…]} request.
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
            let selectors = insights::parse_selectors(&insight_selectors)?;
            let mut lake = prism::Lake::open(&lake).await?;
            insights::put_selectors(&mut lake, selectors.clone()).await?;
            println!("{}", serde_json::to_string_pretty(&insights::selectors_response(lake.url(), &selectors))?);
        }
        SelectorsCommand::Get { lake } => {
            let (url, config) = prism::Lake::read_config(&lake).await?;
            let selectors = insights::get_selectors(&url, &config)?;
            println!("{}", serde_json::to_string_pretty(&insights::selectors_response(&url, &selectors))?);
        }
    }
    Ok(ExitCode::SUCCESS)
}
