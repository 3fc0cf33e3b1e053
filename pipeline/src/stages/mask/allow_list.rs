//! The attributes of a normalized event that may reach the `masked` topic.
//! Any other attribute is dropped by the mask stage, so an attribute that a
//! source adds later stays out of storage until it is reviewed and listed
//! here.

/// Treatment of an allowed attribute's value by the mask stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Treatment {
    /// The value is kept after free-text scrubbing, which turns phone
    /// numbers, emails, card numbers, SSNs and IBANs into tokens.
    Scrub,
    /// The value is replaced by its pseudonym of this kind, because it
    /// follows one contact or person.
    Pseudonymize(&'static str),
    /// The value is a phone number and is replaced by the pseudonym of its
    /// E.164 form, the same as `phone_pseudonym` for that number.
    PhonePseudonym,
}

/// Allowed attribute names and their treatment, as the sources in
/// `pipeline/src/sources/` and the normalize stage write them.
pub const ALLOWED_ATTRIBUTES: [(&str, Treatment); 47] = [
    // Genesys Cloud CX detail events and conversations.
    ("genesys_event", Treatment::Scrub),
    ("media_type", Treatment::Scrub),
    ("direction", Treatment::Scrub),
    ("disconnect_type", Treatment::Scrub),
    ("provider", Treatment::Scrub),
    ("queue_id", Treatment::Scrub),
    ("flow_id", Treatment::Scrub),
    ("flow_type", Treatment::Scrub),
    ("flow_outcome_value", Treatment::Scrub),
    ("flow_outcome_id", Treatment::Scrub),
    ("flow_step", Treatment::Scrub),
    ("exit_reason", Treatment::Scrub),
    ("acd_outcome", Treatment::Scrub),
    ("transfer_type", Treatment::Scrub),
    ("outbound_campaign_id", Treatment::Scrub),
    // A media session id names one leg of one contact. The pseudonym still
    // joins the events of a leg.
    ("session_id", Treatment::Pseudonymize("session")),
    ("division_id", Treatment::Scrub),
    // The called line. Inbound it is the contact center's number, but an
    // agent's direct-dial number is personal, so only its pseudonym passes.
    ("dnis", Treatment::PhonePseudonym),
    ("leg_error_codes", Treatment::Scrub),
    // Genesys Cloud CX operational events.
    ("integration_id", Treatment::Scrub),
    ("error_code", Treatment::Scrub),
    ("entity_type", Treatment::Scrub),
    ("entity_name", Treatment::Scrub),
    ("operational_event_id", Treatment::Scrub),
    ("operational_event_name", Treatment::Scrub),
    // The normalize stage's service rules.
    ("default_service", Treatment::Scrub),
    // NICE CXone skill summaries and availability drops.
    ("skill_id", Treatment::Scrub),
    ("skill_name", Treatment::Scrub),
    ("service_level", Treatment::Scrub),
    ("service_level_goal", Treatment::Scrub),
    ("service_level_threshold_secs", Treatment::Scrub),
    ("contacts_offered", Treatment::Scrub),
    ("contacts_out_of_sla", Treatment::Scrub),
    ("agents_available", Treatment::Scrub),
    ("business_unit_id", Treatment::Scrub),
    ("previous_agents_available", Treatment::Scrub),
    ("availability_drop_share", Treatment::Scrub),
    ("availability_drop_threshold", Treatment::Scrub),
    // NICE agent states, counted per skill.
    ("agents_total", Treatment::Scrub),
    ("agents_acw", Treatment::Scrub),
    ("agents_outbound", Treatment::Scrub),
    ("agent_states", Treatment::Scrub),
    // Datadog Synthetics and Pingdom checks.
    ("alert_transition", Treatment::Scrub),
    ("datadog_event_type", Treatment::Scrub),
    ("check_state", Treatment::Scrub),
    ("previous_state", Treatment::Scrub),
    ("check_type", Treatment::Scrub),
];

/// Returns the treatment of an allowed attribute, or `None` when the
/// attribute must be dropped.
pub fn treatment(name: &str) -> Option<Treatment> {
    ALLOWED_ATTRIBUTES
        .iter()
        .find(|(allowed, _)| *allowed == name)
        .map(|(_, treatment)| *treatment)
}
