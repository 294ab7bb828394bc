//! The `controllers` command: lists the cluster's controllers, or removes one.

use colex_proto as proto;
use colex_proto::members_client::MembersClient;
use tabled::Tabled;

use crate::client::{CliError, Controller};
use crate::output::{self, OutputFormat};
use crate::table;

/// Row of the table `controllers` prints.
#[derive(Debug, Tabled)]
#[tabled(rename_all = "UPPERCASE")]
pub struct ControllerRow {
    pub id: u64,
    pub address: String,
    pub role: String,
    pub leader: String,
    /// Index of the last log entry the controller applied, `-` when it did not respond to the leader's probe.
    pub applied: String,
    pub state: String,
}

/// Prints the members from the leader's view.
pub async fn list(addresses: &str, format: OutputFormat) -> Result<(), CliError> {
    let controller = Controller::connect(addresses).await?;
    let response = MembersClient::new(controller.channel.clone())
        .list(proto::ListMembersRequest { local: false })
        .await
        .map_err(|status| CliError::from_status(&controller.address, &status))?
        .into_inner();
    match format {
        OutputFormat::Json => output::print_json(&output::ControllerList::new(&response.members)),
        OutputFormat::Table => {
            println!("{}", render(&response.members));
            Ok(())
        }
    }
}

/// Removes controller `id` and prints the members left.
pub async fn remove(addresses: &str, id: u64) -> Result<(), CliError> {
    let controller = Controller::connect(addresses).await?;
    let response = MembersClient::new(controller.channel.clone())
        .remove(proto::RemoveMemberRequest { id })
        .await
        .map_err(|status| CliError::from_status(&controller.address, &status))?
        .into_inner();
    println!("controller {id} removed");
    println!("{}", render(&response.members));
    Ok(())
}

fn render(members: &[proto::Member]) -> String {
    let rows: Vec<ControllerRow> = members.iter().map(controller_row).collect();
    table::render(&rows)
}

fn controller_row(member: &proto::Member) -> ControllerRow {
    ControllerRow {
        id: member.id,
        address: member.address.clone(),
        role: member.role().label().to_owned(),
        leader: if member.leader { "yes" } else { "" }.to_owned(),
        applied: member
            .last_applied
            .map_or_else(|| "-".to_owned(), |index| index.to_string()),
        state: if member.reachable { "UP" } else { "DOWN" }.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controllers_table_matches_colex_look() {
        let members = [
            proto::Member {
                id: 1,
                address: "198.51.100.2:7069".to_owned(),
                role: proto::MemberRole::Voter.into(),
                leader: true,
                last_applied: Some(42),
                reachable: true,
            },
            proto::Member {
                id: 2,
                address: "198.51.100.20:7069".to_owned(),
                role: proto::MemberRole::Learner.into(),
                leader: false,
                last_applied: None,
                reachable: false,
            },
        ];
        let expected = "\
|----|--------------------|---------|--------|---------|-------|
| ID |      ADDRESS       |  ROLE   | LEADER | APPLIED | STATE |
|----|--------------------|---------|--------|---------|-------|
| 1  | 198.51.100.2:7069  | voter   | yes    | 42      | UP    |
| 2  | 198.51.100.20:7069 | learner |        | -       | DOWN  |
|----|--------------------|---------|--------|---------|-------|";
        assert_eq!(render(&members), expected);
    }
}
