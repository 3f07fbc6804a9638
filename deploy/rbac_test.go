package deploy_test

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"slices"
	"strings"
	"testing"

	celgo "github.com/google/cel-go/cel"
	celtypes "github.com/google/cel-go/common/types"
	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer/json"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/apiserver/pkg/admission"
	celplugin "k8s.io/apiserver/pkg/admission/plugin/cel"
	"k8s.io/apiserver/pkg/admission/plugin/webhook/matchconditions"
	celconfig "k8s.io/apiserver/pkg/apis/cel"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/cel/environment"
)

// decodeAll decodes every document of a YAML file the strict way (an unknown or duplicated
// field is an error), with the types of the API groups given.
func decodeAll(t *testing.T, path string, add ...func(*runtime.Scheme) error) []runtime.Object {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	scheme := runtime.NewScheme()
	for _, f := range add {
		if err := f(scheme); err != nil {
			t.Fatal(err)
		}
	}
	s := json.NewSerializerWithOptions(json.DefaultMetaFactory, scheme, scheme, json.SerializerOptions{Yaml: true, Strict: true})
	reader := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(raw)))
	var out []runtime.Object
	for {
		doc, err := reader.Read()
		if err != nil {
			break
		}
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		obj, _, err := s.Decode(doc, nil, nil)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		out = append(out, obj)
	}
	return out
}

// guard is deploy/rbac/kmsctl-rewrite-guard.yaml, decoded, and the resources of the
// kmsctl-rewrite role in the core group.
func guard(t *testing.T) (*admissionv1.ValidatingAdmissionPolicy, *admissionv1.ValidatingAdmissionPolicyBinding, []string) {
	t.Helper()
	var rewriteResources []string
	for _, obj := range decodeAll(t, "rbac/kmsctl-rewrite.yaml", rbacv1.AddToScheme) {
		if r, ok := obj.(*rbacv1.ClusterRole); ok && r.Name == "kmsctl-rewrite" {
			for _, rule := range r.Rules {
				if slices.Contains(rule.APIGroups, "") && slices.Contains(rule.Verbs, "patch") {
					rewriteResources = append(rewriteResources, rule.Resources...)
				}
			}
		}
	}
	var policy *admissionv1.ValidatingAdmissionPolicy
	var binding *admissionv1.ValidatingAdmissionPolicyBinding
	for _, obj := range decodeAll(t, "rbac/kmsctl-rewrite-guard.yaml", admissionv1.AddToScheme) {
		switch o := obj.(type) {
		case *admissionv1.ValidatingAdmissionPolicy:
			policy = o
		case *admissionv1.ValidatingAdmissionPolicyBinding:
			binding = o
		default:
			t.Fatalf("kmsctl-rewrite-guard.yaml holds a %T", obj)
		}
	}
	if policy == nil || binding == nil {
		t.Fatal("kmsctl-rewrite-guard.yaml needs a ValidatingAdmissionPolicy and its binding")
	}
	return policy, binding, rewriteResources
}

// The guard is bound, denies, fails closed, and matches every update of every resource that
// the kmsctl-rewrite role may patch.
func TestRewriteGuardShape(t *testing.T) {
	policy, binding, resources := guard(t)
	if binding.Spec.PolicyName != policy.Name || !slices.Equal(binding.Spec.ValidationActions, []admissionv1.ValidationAction{admissionv1.Deny}) {
		t.Errorf("binding %+v: want policyName %s and validationActions [Deny]", binding.Spec, policy.Name)
	}
	if fp := policy.Spec.FailurePolicy; fp == nil || *fp != admissionv1.Fail {
		t.Errorf("failurePolicy %v: want Fail (a policy that cannot be evaluated must not let a change through)", fp)
	}
	if len(resources) == 0 {
		t.Fatal("no core resources with patch in the kmsctl-rewrite role")
	}
	var matched []string
	for _, r := range policy.Spec.MatchConstraints.ResourceRules {
		if slices.Contains(r.APIGroups, "") && slices.Contains(r.Operations, admissionv1.Update) {
			matched = append(matched, r.Resources...)
		}
	}
	for _, r := range resources {
		if !slices.Contains(matched, r) {
			t.Errorf("the kmsctl-rewrite role patches %s, which the guard does not match", r)
		}
	}
}

// RewriteIdentity is the identity the shipped guard names.
const rewriteIdentity = "system:serviceaccount:kube-system:kmsctl-rewrite"

// The guard's expressions, compiled and run by kube-apiserver's own ValidatingAdmissionPolicy
// evaluator (k8s.io/apiserver, as its plugin compiles a policy): rewrite's patch, which leaves
// the object as it was, passes; any change by the rewrite identity is denied; other identities
// are not matched.
func TestRewriteGuardDecisions(t *testing.T) {
	policy, _, _ := guard(t)
	g := compile(t, policy)

	old := &corev1.Secret{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
		ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: "app", ResourceVersion: "42", UID: "u-1", Labels: map[string]string{"app": "db"}},
		Data:       map[string][]byte{"password": []byte("hunter2")},
		Type:       corev1.SecretTypeOpaque,
	}
	change := func(f func(s *corev1.Secret)) *corev1.Secret {
		s := old.DeepCopy()
		f(s)
		return s
	}
	for _, c := range []struct {
		name   string
		user   string
		object *corev1.Secret
		denied bool
	}{
		{"rewrite's patch", rewriteIdentity, old.DeepCopy(), false},
		{"data", rewriteIdentity, change(func(s *corev1.Secret) { s.Data["password"] = []byte("mine") }), true},
		{"a new key", rewriteIdentity, change(func(s *corev1.Secret) { s.Data["extra"] = []byte("x") }), true},
		{"type", rewriteIdentity, change(func(s *corev1.Secret) { s.Type = "kubernetes.io/basic-auth" }), true},
		{"a label", rewriteIdentity, change(func(s *corev1.Secret) { s.Labels["app"] = "other" }), true},
		{"an annotation", rewriteIdentity, change(func(s *corev1.Secret) { s.Annotations = map[string]string{"a": "b"} }), true},
		{"a finalizer", rewriteIdentity, change(func(s *corev1.Secret) { s.Finalizers = []string{"x/y"} }), true},
		{"immutable", rewriteIdentity, change(func(s *corev1.Secret) { s.Immutable = new(true) }), true},
		{"another identity's change", "kubernetes-admin", change(func(s *corev1.Secret) { s.Data["password"] = []byte("new") }), false},
	} {
		t.Run(c.name, func(t *testing.T) {
			denied, msg := decide(t, g, c.user, c.object, old)
			if denied != c.denied {
				t.Fatalf("denied %v (%s), want %v", denied, msg, c.denied)
			}
			if denied && !strings.Contains(msg, "changes nothing") {
				t.Errorf("denial message %q does not say what is allowed", msg)
			}
		})
	}
}

// guardEval is the guard compiled as kube-apiserver's ValidatingAdmissionPolicy plugin
// compiles a policy (k8s.io/apiserver .../policy/validating/plugin.go compilePolicy: the same
// compiler, environment and variables, without params).
type guardEval struct {
	match       matchconditions.Matcher
	validations celplugin.ConditionEvaluator
	messages    []string
}

// validation is a policy's validation as the compiler takes it: a CEL expression to a bool.
type validation struct{ expression string }

func (v validation) GetExpression() string      { return v.expression }
func (v validation) ReturnTypes() []*celgo.Type { return []*celgo.Type{celgo.BoolType} }

func compile(t *testing.T, p *admissionv1.ValidatingAdmissionPolicy) guardEval {
	t.Helper()
	compiler, err := celplugin.NewCompositedCompiler(environment.MustBaseEnvSet(environment.DefaultCompatibilityVersion()))
	if err != nil {
		t.Fatal(err)
	}
	vars := celplugin.OptionalVariableDeclarations{HasAuthorizer: true}
	var conditions, validations []celplugin.ExpressionAccessor
	for i := range p.Spec.MatchConditions {
		conditions = append(conditions, (*matchconditions.MatchCondition)(&p.Spec.MatchConditions[i]))
	}
	var messages []string
	for _, v := range p.Spec.Validations {
		if v.MessageExpression != "" {
			t.Fatal("a messageExpression: this test does not compile those")
		}
		validations = append(validations, validation{v.Expression})
		messages = append(messages, v.Message)
	}
	if len(conditions) == 0 || len(validations) == 0 {
		t.Fatal("the guard needs a match condition (the identity) and a validation")
	}
	return guardEval{
		match:       matchconditions.NewMatcher(compiler.CompileCondition(conditions, vars, environment.StoredExpressions), p.Spec.FailurePolicy, "policy", "validate", p.Name),
		validations: compiler.CompileCondition(validations, vars, environment.StoredExpressions),
		messages:    messages,
	}
}

// decide evaluates the guard on an update of old to object by username, as the plugin does:
// the match conditions first, then each validation; it says whether the update is denied, and
// why.
func decide(t *testing.T, g guardEval, username string, object, old *corev1.Secret) (bool, string) {
	t.Helper()
	gvr := corev1.SchemeGroupVersion.WithResource("secrets")
	gvk := corev1.SchemeGroupVersion.WithKind("Secret")
	attrs := admission.NewAttributesRecord(object, old, gvk, old.Namespace, old.Name, gvr, "", admission.Update,
		&metav1.UpdateOptions{}, false, &user.DefaultInfo{Name: username})
	versioned := &admission.VersionedAttributes{Attributes: attrs, VersionedKind: gvk,
		VersionedObject: admission.NewLazyObject(object), VersionedOldObject: admission.NewLazyObject(old)}
	m := g.match.Match(context.Background(), versioned, nil, nil)
	if m.Error != nil {
		t.Fatalf("match conditions: %v", m.Error)
	}
	if !m.Matches {
		return false, "not matched"
	}
	request := celplugin.CreateAdmissionRequest(attrs, metav1.GroupVersionResource(gvr), metav1.GroupVersionKind(gvk))
	ns := celplugin.CreateNamespaceObject(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: old.Namespace}})
	results, _, err := g.validations.ForInput(context.Background(), versioned, request, celplugin.OptionalVariableBindings{}, ns, celconfig.RuntimeCELCostBudget)
	if err != nil {
		t.Fatal(err)
	}
	var why []string
	for i, r := range results {
		if r.Error != nil {
			t.Fatalf("validation %d: %v", i, r.Error)
		}
		if r.EvalResult != celtypes.True {
			why = append(why, g.messages[i])
		}
	}
	return len(why) > 0, strings.Join(why, "; ")
}
