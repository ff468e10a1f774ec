//! The tonic adapter: authenticate, check the scope each RPC needs, call the API.

use broadside_proto::v1::subscriber_service_server::SubscriberService;
use broadside_proto::v1::*;
use broadside_store::Scope;
use tonic::{Request, Response, Status};

use crate::SubscriberApi;
use crate::events::reply;

/// `call!(self, request, Scope, group.method)`: authorize, then run `method(caller, body)` of that RPC group.
macro_rules! call {
    ($self:ident, $request:ident, $scope:expr, $group:ident . $method:ident) => {{
        let caller = $self.auth.authorize_request(&$request, $scope).await?;
        Ok(Response::new($self.$group().$method(&caller, $request.into_inner()).await?))
    }};
}

/// `call_writing!(self, request, Scope, method)`: as `call!`, for a method that
/// returns the position of the events it wrote; it becomes the response's header.
macro_rules! call_writing {
    ($self:ident, $request:ident, $scope:expr, $group:ident . $method:ident) => {{
        let caller = $self.auth.authorize_request(&$request, $scope).await?;
        let (value, position) = $self.$group().$method(&caller, $request.into_inner()).await?;
        Ok(reply(value, &position))
    }};
}

#[tonic::async_trait]
impl SubscriberService for SubscriberApi {
    async fn create_list(&self, request: Request<CreateListRequest>) -> Result<Response<MailingList>, Status> {
        call!(self, request, Scope::SubscribersWrite, lists.create_list)
    }
    async fn get_list(&self, request: Request<GetListRequest>) -> Result<Response<MailingList>, Status> {
        call!(self, request, Scope::Read, lists.get_list)
    }
    async fn list_lists(&self, request: Request<ListListsRequest>) -> Result<Response<ListListsResponse>, Status> {
        call!(self, request, Scope::Read, lists.list_lists)
    }
    async fn delete_list(&self, request: Request<DeleteListRequest>) -> Result<Response<()>, Status> {
        call!(self, request, Scope::SubscribersWrite, lists.delete_list)
    }
    async fn create_subscriber(
        &self,
        request: Request<CreateSubscriberRequest>,
    ) -> Result<Response<Subscriber>, Status> {
        call_writing!(self, request, Scope::SubscribersWrite, subscribers.create_subscriber)
    }
    async fn get_subscriber(&self, request: Request<GetSubscriberRequest>) -> Result<Response<Subscriber>, Status> {
        call!(self, request, Scope::Read, subscribers.get_subscriber)
    }
    async fn list_subscribers(
        &self,
        request: Request<ListSubscribersRequest>,
    ) -> Result<Response<ListSubscribersResponse>, Status> {
        call!(self, request, Scope::Read, subscribers.list_subscribers)
    }
    async fn update_subscriber(
        &self,
        request: Request<UpdateSubscriberRequest>,
    ) -> Result<Response<Subscriber>, Status> {
        call_writing!(self, request, Scope::SubscribersWrite, subscribers.update_subscriber)
    }
    async fn unsubscribe(&self, request: Request<UnsubscribeRequest>) -> Result<Response<Subscriber>, Status> {
        call_writing!(self, request, Scope::SubscribersWrite, subscribers.unsubscribe)
    }
    async fn confirm_subscription(
        &self,
        request: Request<ConfirmSubscriptionRequest>,
    ) -> Result<Response<Subscriber>, Status> {
        let caller = self.auth.authorize_request(&request, Scope::SubscribersWrite).await?;
        let (value, position) = self.confirmations().confirm_subscription(Some(&caller), request.into_inner()).await?;
        Ok(reply(value, &position))
    }
    async fn list_consent_records(
        &self,
        request: Request<ListConsentRecordsRequest>,
    ) -> Result<Response<ListConsentRecordsResponse>, Status> {
        call!(self, request, Scope::Read, subscribers.list_consent_records)
    }
    async fn export_subscriber(
        &self,
        request: Request<ExportSubscriberRequest>,
    ) -> Result<Response<ExportSubscriberResponse>, Status> {
        call!(self, request, Scope::Admin, privacy.export_subscriber)
    }
    async fn erase_subscriber(
        &self,
        request: Request<EraseSubscriberRequest>,
    ) -> Result<Response<EraseSubscriberResponse>, Status> {
        call_writing!(self, request, Scope::Admin, privacy.erase_subscriber)
    }
    async fn import_subscribers(
        &self,
        request: Request<tonic::Streaming<ImportSubscribersRequest>>,
    ) -> Result<Response<ImportSubscribersResponse>, Status> {
        call_writing!(self, request, Scope::SubscribersWrite, imports.import_subscribers)
    }
    async fn add_suppression(&self, request: Request<AddSuppressionRequest>) -> Result<Response<Suppression>, Status> {
        call_writing!(self, request, Scope::SubscribersWrite, suppressions.add_suppression)
    }
    async fn remove_suppression(&self, request: Request<RemoveSuppressionRequest>) -> Result<Response<()>, Status> {
        call_writing!(self, request, Scope::SubscribersWrite, suppressions.remove_suppression)
    }
    async fn list_suppressions(
        &self,
        request: Request<ListSuppressionsRequest>,
    ) -> Result<Response<ListSuppressionsResponse>, Status> {
        call!(self, request, Scope::Read, suppressions.list_suppressions)
    }
    async fn check_suppression(
        &self,
        request: Request<CheckSuppressionRequest>,
    ) -> Result<Response<CheckSuppressionResponse>, Status> {
        call!(self, request, Scope::Read, suppressions.check_suppression)
    }
}
