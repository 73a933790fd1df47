//! batch/v1 Jobs: defaults (`SetDefaults_Job`), the selector upstream generates from the job's
//! uid, validation and columns.

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use serde_json::Value;

use super::Kind;
use super::apps::{selector_and_template, template_cells, template_columns};
use super::pod::default_template;
use crate::error::FieldError;
use crate::table::{self, Column};
use crate::validation;

/// Labels upstream puts on a job's pods and selects them by (the legacy names too).
const JOB_NAME_LABELS: [&str; 2] = ["job-name", "batch.kubernetes.io/job-name"];
const CONTROLLER_UID_LABELS: [&str; 2] = ["controller-uid", "batch.kubernetes.io/controller-uid"];

/// The wide `Selector` column's description: the Job spec's selector documentation.
const JOB_SELECTOR: &str = "A label query over pods that should match the pod count. Normally, the system sets this field for you. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors";

impl Kind for Job {
    fn set_defaults(&mut self) {
        super::always_written(&mut self.status);
        let name = self.metadata.name.clone().unwrap_or_default();
        let uid = self.metadata.uid.clone();
        let spec = self.spec.get_or_insert_with(JobSpec::default);
        if spec.completions.is_none() && spec.parallelism.is_none() {
            spec.completions = Some(1);
        }
        spec.parallelism.get_or_insert(1);
        let unlimited = spec.backoff_limit_per_index.is_some();
        spec.backoff_limit.get_or_insert(if unlimited { i32::MAX } else { 6 });
        spec.completion_mode.get_or_insert_with(|| "NonIndexed".into());
        spec.suspend.get_or_insert(false);
        let replacement = if spec.pod_failure_policy.is_some() { "Failed" } else { "TerminatingOrFailed" };
        spec.pod_replacement_policy.get_or_insert_with(|| replacement.into());
        let template_labels = spec.template.metadata.as_ref().and_then(|m| m.labels.clone());
        if let Some(labels) = template_labels
            && self.metadata.labels.as_ref().is_none_or(|l| l.is_empty())
        {
            self.metadata.labels = Some(labels);
        }
        // Unless the user manages the selector, select this job's pods by its uid (known once
        // the API server has assigned it, before admission).
        if spec.manual_selector != Some(true)
            && let Some(uid) = uid
        {
            let labels =
                spec.template.metadata.get_or_insert_with(Default::default).labels.get_or_insert_with(Default::default);
            for key in JOB_NAME_LABELS {
                labels.entry(key.into()).or_insert_with(|| name.clone());
            }
            for key in CONTROLLER_UID_LABELS {
                labels.entry(key.into()).or_insert_with(|| uid.clone());
            }
            let selector =
                spec.selector.get_or_insert_with(Default::default).match_labels.get_or_insert_with(Default::default);
            selector.entry(CONTROLLER_UID_LABELS[1].into()).or_insert(uid);
        }
        default_template(&mut spec.template);
    }

    fn validate(&self, errors: &mut Vec<FieldError>) {
        let Some(spec) = &self.spec else { return errors.push(FieldError::required("spec", "")) };
        for (field, value) in [
            ("spec.parallelism", spec.parallelism),
            ("spec.completions", spec.completions),
            ("spec.backoffLimit", spec.backoff_limit),
        ] {
            if let Some(v) = value
                && v < 0
            {
                errors.push(FieldError::invalid(field, v, "must be greater than or equal to 0"));
            }
        }
        if let Some(deadline) = spec.active_deadline_seconds
            && deadline <= 0
        {
            errors.push(FieldError::invalid(
                "spec.activeDeadlineSeconds",
                deadline,
                "must be greater than or equal to 1",
            ));
        }
        selector_and_template(spec.selector.as_ref(), &spec.template, "job", &["OnFailure", "Never"], errors);
    }

    fn validate_update(&self, old: &Self, errors: &mut Vec<FieldError>) {
        let (Some(new), Some(old)) = (&self.spec, &old.spec) else { return };
        validation::immutable(&new.selector, &old.selector, "spec.selector", errors);
        validation::immutable(&new.completions, &old.completions, "spec.completions", errors);
        validation::immutable(&new.template, &old.template, "spec.template", errors);
    }

    fn columns() -> Vec<Column> {
        let mut columns = vec![
            Column::name(),
            Column::string("Status", "Status of the job."),
            Column::string(
                "Completions",
                "The desired number of successfully finished pods the job should be run with.",
            ),
            Column::string("Duration", "Time required to complete the job."),
            Column::age(),
        ];
        columns.extend(template_columns(JOB_SELECTOR));
        columns
    }

    fn cells(&self, now: Timestamp) -> Vec<Value> {
        let spec = self.spec.clone().unwrap_or_default();
        let status = self.status.clone().unwrap_or_default();
        let has = |kind: &str| status.conditions.iter().flatten().any(|c| c.type_ == kind && c.status == "True");
        let state = if has("Complete") {
            "Complete"
        } else if has("Failed") {
            "Failed"
        } else if self.metadata.deletion_timestamp.is_some() {
            "Terminating"
        } else if has("Suspended") {
            "Suspended"
        } else if has("FailureTarget") {
            "FailureTarget"
        } else if has("SuccessCriteriaMet") {
            "SuccessCriteriaMet"
        } else {
            "Running"
        };
        let succeeded = status.succeeded.unwrap_or(0);
        let completions = match (spec.completions, spec.parallelism) {
            (Some(c), _) => format!("{succeeded}/{c}"),
            (None, Some(p)) if p > 1 => format!("{succeeded}/1 of {p}"),
            _ => format!("{succeeded}/1"),
        };
        let duration = match (&status.start_time, &status.completion_time) {
            (None, _) => String::new(),
            (Some(start), None) => table::human_duration(now.as_second() - start.0.as_second()),
            (Some(start), Some(end)) => table::human_duration(end.0.as_second() - start.0.as_second()),
        };
        let mut cells = vec![
            table::name(&self.metadata),
            Value::String(state.into()),
            Value::String(completions),
            Value::String(duration),
            table::age(&self.metadata, now),
        ];
        cells.extend(template_cells(&spec.template, spec.selector.as_ref()));
        cells
    }
}
