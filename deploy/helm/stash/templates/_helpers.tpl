{{/*
Labels Helm adds to each object's metadata, beside the ones the kustomize
base has (controller/tests/deploy.rs compares the two without these).
*/}}
{{- define "stash.chartLabels" -}}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}
