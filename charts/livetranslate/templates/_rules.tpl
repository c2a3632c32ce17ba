{{/*
LiveTranslate's recording and alerting rules, as the `groups:` list of a Prometheus rules file.
Rendered into the PrometheusRule (prometheusrule.yaml); with default values it must equal
files/alerts.rules.yaml byte for byte in content (tests/chart/test_alerts.py), which is what
`promtool test rules` runs against and what a Prometheus without the operator loads.
*/}}
{{- define "livetranslate.ruleGroups" -}}
{{- $r := .Values.prometheusRule -}}
{{- $le := $r.captionLatency.thresholdSeconds | toString -}}
{{- $budget := printf "(1 - %v)" $r.captionLatency.objective -}}
{{- $runbook := trimSuffix "/" $r.runbookBaseUrl -}}
- name: livetranslate.slo
  rules:
    {{- range $window := list "5m" "30m" "1h" "6h" }}
    # Fraction of captions slower than the SLO threshold over {{ $window }}.
    - record: livetranslate:caption_latency_slow_ratio:rate{{ $window }}
      expr: |-
        1 - (
          sum by (namespace, pipeline) (rate(livetranslate_caption_latency_seconds_bucket{le="{{ $le }}"}[{{ $window }}]))
          /
          sum by (namespace, pipeline) (rate(livetranslate_caption_latency_seconds_count[{{ $window }}]))
        )
    {{- end }}
- name: livetranslate.alerts
  rules:
    - alert: LiveTranslateCaptionLatencyBudgetBurnFast
      expr: |-
        livetranslate:caption_latency_slow_ratio:rate1h > 14.4 * {{ $budget }}
        and
        livetranslate:caption_latency_slow_ratio:rate5m > 14.4 * {{ $budget }}
      for: 2m
      labels:
        severity: critical
      annotations:
        summary: Captions of pipeline {{ "{{ $labels.namespace }}/{{ $labels.pipeline }}" }} are too slow; at this rate the month's latency error budget is gone in two days.
        description: {{ printf "%s of captions took longer than %ss over the last hour (objective: %v within %ss)." "{{ $value | humanizePercentage }}" $le $r.captionLatency.objective $le | quote }}
        runbook: Check the pipeline's dashboard for the slow stage (queue depth, audio RTF, translation latency); if replicas are pinned at max, raise replicas.max or add GPU capacity; if the audio device fell back to CPU, see placement in docs/operations.md.
        {{- if $runbook }}
        runbook_url: {{ $runbook }}#livetranslatecaptionlatencybudgetburn
        {{- end }}
    - alert: LiveTranslateCaptionLatencyBudgetBurnSlow
      expr: |-
        livetranslate:caption_latency_slow_ratio:rate6h > 6 * {{ $budget }}
        and
        livetranslate:caption_latency_slow_ratio:rate30m > 6 * {{ $budget }}
      for: 15m
      labels:
        severity: warning
      annotations:
        summary: Captions of pipeline {{ "{{ $labels.namespace }}/{{ $labels.pipeline }}" }} burn the latency error budget steadily (6x over six hours).
        description: {{ printf "%s of captions took longer than %ss over the last six hours (objective: %v within %ss)." "{{ $value | humanizePercentage }}" $le $r.captionLatency.objective $le | quote }}
        runbook: Compare caption latency with sessions and replicas over the last day; a steady burn usually means max replicas or the model size no longer fit the load (try a fallback model or more GPUs).
        {{- if $runbook }}
        runbook_url: {{ $runbook }}#livetranslatecaptionlatencybudgetburn
        {{- end }}
    - alert: LiveTranslateStageNoReadyReplicas
      expr: |-
        max by (namespace, pipeline, stage) (livetranslate_stage_replicas) > 0
        and
        max by (namespace, pipeline, stage) (livetranslate_stage_ready_replicas) == 0
      for: {{ $r.noReadyReplicasFor }}
      labels:
        severity: critical
      annotations:
        summary: Stage {{ "{{ $labels.stage }}" }} of pipeline {{ "{{ $labels.namespace }}/{{ $labels.pipeline }}" }} has no ready replicas; live captions are down.
        description: The operator wants replicas for this stage but none has been ready for {{ $r.noReadyReplicasFor }}.
        runbook: kubectl -n NAMESPACE describe tp PIPELINE and kubectl get pods -l app.kubernetes.io/instance=PIPELINE; look for Pending pods (no GPU/NPU capacity), image pull errors, or a readiness probe failing while the model loads.
        {{- if $runbook }}
        runbook_url: {{ $runbook }}#livetranslatestagenoreadyreplicas
        {{- end }}
    - alert: LiveTranslateGPUFramebufferHigh
      expr: |-
        DCGM_FI_DEV_FB_USED / (DCGM_FI_DEV_FB_USED + DCGM_FI_DEV_FB_FREE) > {{ $r.gpuFramebuffer.highWatermark }}
      for: 10m
      labels:
        severity: warning
      annotations:
        summary: GPU {{ "{{ $labels.gpu }}" }} on {{ "{{ $labels.Hostname }}" }} has its framebuffer above the high watermark.
        description: {{ printf "Framebuffer use is %s (high watermark %v); new translation replicas will not fit and the operator moves to a fallback model." "{{ $value | humanizePercentage }}" $r.gpuFramebuffer.highWatermark | quote }}
        runbook: See which pods share the GPU (dcgm-exporter pod labels); lower spec.translation.gpuMemoryUtilization, switch to a fallback model, or add GPU nodes.
        {{- if $runbook }}
        runbook_url: {{ $runbook }}#livetranslategpuframebufferhigh
        {{- end }}
    - alert: LiveTranslateAutoscalerHeld
      expr: |-
        max by (namespace, pipeline) (livetranslate_scaling_active) == 0
      for: {{ $r.scalingHeldFor }}
      labels:
        severity: warning
      annotations:
        summary: The autoscaler of pipeline {{ "{{ $labels.namespace }}/{{ $labels.pipeline }}" }} is held (ScalingActive=False).
        description: The operator has not been able to read the metrics it scales on for {{ $r.scalingHeldFor }}; replicas stay where they are.
        runbook: kubectl -n NAMESPACE get tp PIPELINE -o jsonpath='{.status.conditions}' gives the reason; check spec.scaling.prometheusUrl is reachable from the operator and that Prometheus scrapes the pipeline's pods.
        {{- if $runbook }}
        runbook_url: {{ $runbook }}#livetranslateautoscalerheld
        {{- end }}
    - alert: LiveTranslateScalingPinnedAtMax
      expr: |-
        max by (namespace, pipeline, stage) (livetranslate_stage_replicas)
        >= max by (namespace, pipeline, stage) (livetranslate_stage_max_replicas)
        and
        max by (namespace, pipeline, stage) (livetranslate_stage_max_replicas) > 0
      for: {{ $r.pinnedAtMaxFor }}
      labels:
        severity: warning
      annotations:
        summary: Stage {{ "{{ $labels.stage }}" }} of pipeline {{ "{{ $labels.namespace }}/{{ $labels.pipeline }}" }} has been at its maximum replicas for {{ $r.pinnedAtMaxFor }}.
        description: The autoscaler cannot add capacity; latency rises with any further load.
        runbook: Raise spec.STAGE.replicas.max if the cluster has room (GPU nodes for translation), or cap sessions with spec.gateway.maxSessionsPerReplica.
        {{- if $runbook }}
        runbook_url: {{ $runbook }}#livetranslatescalingpinnedatmax
        {{- end }}
    - alert: LiveTranslateSessionStoreUnreachable
      expr: |-
        max by (namespace, pipeline) (livetranslate_session_store_deferred_writes) > 0
      for: {{ $r.sessionStoreFor }}
      labels:
        severity: warning
      annotations:
        summary: The session store (Redis) of pipeline {{ "{{ $labels.namespace }}/{{ $labels.pipeline }}" }} has been unreachable for {{ $r.sessionStoreFor }}.
        description: {{ printf "Live captions go on, but %s session writes wait for it: sessions cannot move to another gateway replica (drain, resume) until it is back." "{{ $value | humanize }}" | quote }}
        runbook: Check the Redis named in spec.gateway.redisUrl (pod, failover, network policy from the gateway pods); the gateway writes what waited as soon as it answers.
        {{- if $runbook }}
        runbook_url: {{ $runbook }}#livetranslatesessionstoreunreachable
        {{- end }}
    - alert: LiveTranslateOperatorReconcileErrors
      expr: |-
        sum by (namespace, job) (rate(livetranslate_reconcile_seconds_count{result!~"ok|invalid"}[10m])) > 0
      for: 15m
      labels:
        severity: warning
      annotations:
        summary: The LiveTranslate operator keeps failing to reconcile pipelines.
        description: {{ printf "%s failed reconciles per second over the last 10 minutes." "{{ $value | humanize }}" | quote }}
        runbook: Read the operator's log lines with level=error (they carry pipeline and namespace); RBAC denials (403) mean the ClusterRole lacks a verb, 422 means a manifest the API server refuses.
        {{- if $runbook }}
        runbook_url: {{ $runbook }}#livetranslateoperatorreconcileerrors
        {{- end }}
{{- end -}}
